"""``opendmp idp issue|cert``: the development identity provider (:mod:`xua.idp`)."""
from __future__ import annotations

import argparse
import datetime as dt
import sys


def _issue(args: argparse.Namespace) -> int:
    from lxml import etree

    from opendmp.config import Settings

    from .idp import VihfClaims, issue

    settings = Settings.from_env()
    settings.ensure_home()
    claims = VihfClaims(
        ins=args.ins, profession=args.profession,
        specialty=None if args.specialty in ("", "none") else args.specialty,
        mode=args.mode, ins_oid=args.ins_oid, ps_id=args.ps_id, name=args.name,
        secteur=args.secteur, structure=args.structure, auth_mode=args.auth_mode,
        audience=args.audience or None, lifetime=dt.timedelta(seconds=args.lifetime))
    assertion = issue(settings.home, claims)
    sys.stdout.write(etree.tostring(assertion, encoding="unicode") + "\n")
    return 0


def _cert(args: argparse.Namespace) -> int:
    from opendmp.config import Settings

    from .idp import dev_idp_files

    settings = Settings.from_env()
    settings.ensure_home()
    print(dev_idp_files(settings.home).cert)
    return 0


def register(sub) -> None:
    from .idp import AUTHN_CLASS, DEV_AUDIENCE, MODES

    idp = sub.add_parser("idp", help="development identity provider (signed VIHF assertions)")
    idp_sub = idp.add_subparsers(dest="idp_command", required=True)
    issue = idp_sub.add_parser("issue", help="print a signed VIHF 3.0 assertion (XML)")
    issue.add_argument("--ins", required=True, help="patient matricule INS (15 chars, key incl.)")
    issue.add_argument("--ins-oid", default="1.2.250.1.213.1.4.10",
                       help="INS assigning authority (default: INS-NIR test)")
    issue.add_argument("--profession", default="10", help="TRE_G15 profession code (10 = médecin)")
    issue.add_argument("--specialty", default="SM26", help="specialty code, 'none' for none")
    issue.add_argument("--mode", default="normal", choices=sorted(MODES), help="access mode")
    issue.add_argument("--auth-mode", default="INDIRECTE", choices=sorted(AUTHN_CLASS))
    issue.add_argument("--ps-id", default="810001234567", help="IdNatPs of the professional")
    issue.add_argument("--name", default="DOCTEUR Jean")
    issue.add_argument("--secteur", default="SA07")
    issue.add_argument("--structure", default="1060016219", help="Identifiant_Structure")
    issue.add_argument("--audience", default=DEV_AUDIENCE, help="'' for no AudienceRestriction")
    issue.add_argument("--lifetime", type=int, default=3600, help="seconds")
    issue.set_defaults(func=_issue)
    cert = idp_sub.add_parser("cert", help="print the path of the IdP certificate (PEM)")
    cert.set_defaults(func=_cert)
