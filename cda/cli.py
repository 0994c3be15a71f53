"""``opendmp push FILE...`` and ``opendmp cda validate|metadata|render FILE...``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _default_url() -> str:
    host = os.environ.get("OPENDMP_HOST", "127.0.0.1")
    port = os.environ.get("OPENDMP_PORT", "8080")
    return f"http://{host}:{port}/xds/repository"


def _facility(args):
    from .metadata import Facility, parse_code
    base = Facility.from_env()
    return Facility(parse_code(args.practice_setting) or base.practice_setting_code,
                    parse_code(args.facility_type) or base.healthcare_facility_type_code)


def _push(args: argparse.Namespace) -> int:
    from .push import push_files
    paths = [Path(p) for p in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    total, started, ok = len(paths), time.monotonic(), 0

    def progress(n, result):
        nonlocal ok
        ok += result.ok
        print(f"[{n}/{total}] {result.line()}", flush=True)
        if total > 1 and sys.stderr.isatty():
            rate = n / max(time.monotonic() - started, 1e-6)
            print(f"\r{n}/{total} sent, {ok} accepted, {rate:.1f} documents/s", end="",
                  file=sys.stderr, flush=True)

    signer = None
    if args.sign:  # IHE DSG: the submission set signed (xua.dsg)
        from xua.dsg import Signer
        signer = Signer.from_files(args.sign, args.sign_cert or args.sign)
    push_files(args.to, paths, facility=_facility(args), source_id=args.source_id,
               validate=not args.no_validate, progress=progress, signer=signer)
    if total > 1 and sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{ok}/{total} documents accepted")
    return 0 if ok == total else 1


def _validate(args: argparse.Namespace) -> int:
    from .validation import validate
    status = 0
    for name in args.files:
        report = validate(Path(name).read_bytes(), run_schematron=not args.no_schematron)
        verdict = "valid" if report.valid else "INVALID"
        print(f"{name}: {verdict} (schema {report.schema or '-'}, "
              f"schematron {report.volet or 'none for this type'})")
        for f in report.findings:
            print(f"  {f}")
        status |= 0 if report.valid else 1
    return status


def _metadata(args: argparse.Namespace) -> int:
    from lxml import etree

    from registry.ebrim import submit_objects_request

    from .push import submission_for
    for name in args.files:
        sub = submission_for(Path(name).read_bytes(), _facility(args))
        print(etree.tostring(submit_objects_request(sub), pretty_print=True).decode())
    return 0


def _render(args: argparse.Namespace) -> int:
    from .render import render
    for name in args.files:
        sys.stdout.write(render(Path(name).read_bytes()))
    return 0


def _facility_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--practice-setting", metavar="CODE^DISPLAY^SCHEME",
                   help="practiceSettingCode when the header has none "
                        "(default: $OPENDMP_FACILITY_PRACTICE_SETTING)")
    p.add_argument("--facility-type", metavar="CODE^DISPLAY^SCHEME",
                   help="healthcareFacilityTypeCode when the header has none "
                        "(default: $OPENDMP_FACILITY_TYPE)")


def register(sub) -> None:
    push = sub.add_parser("push", help="send CDA documents (ITI-41, MTOM) with metadata "
                                       "derived from their headers")
    push.add_argument("files", nargs="+", metavar="FILE")
    push.add_argument("--to", default=_default_url(),
                      help="the repository's ITI-41 endpoint (default: the local server)")
    push.add_argument("--source-id", help="SubmissionSet sourceId OID "
                                          "(default: $OPENDMP_SOURCE_ID or one for this host)")
    push.add_argument("--no-validate", action="store_true",
                      help="send without validating (schema, schematron, header rules) first")
    push.add_argument("--sign", metavar="KEY",
                      help="sign each submission set (IHE DSG, XAdES, as the DMP requires) with "
                           "this PEM private key")
    push.add_argument("--sign-cert", metavar="CERT",
                      help="the signer's PEM certificate, then any intermediates (default: "
                           "read from the --sign file)")
    _facility_options(push)
    push.set_defaults(func=_push)

    cda = sub.add_parser("cda", help="CDA documents: validate, show derived metadata, render")
    cda_sub = cda.add_subparsers(dest="cda_command", required=True)
    v = cda_sub.add_parser("validate", help="schema, ANS schematron and header rules")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--no-schematron", action="store_true")
    v.set_defaults(func=_validate)
    m = cda_sub.add_parser("metadata", help="print the derived ITI-41 metadata (ebRIM)")
    m.add_argument("files", nargs="+", metavar="FILE")
    _facility_options(m)
    m.set_defaults(func=_metadata)
    r = cda_sub.add_parser("render", help="print the HTML rendering")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.set_defaults(func=_render)
