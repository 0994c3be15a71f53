"""``opendmp pix ...``: look at the PIX Manager's data from the command line.

* ``opendmp pix query CX [--domain HD]...`` — the ITI-9 answer for an identifier
  (``id^^^NS&OID&ISO``), computed by the same code as the MLLP listener;
* ``opendmp pix outbox`` — ITI-10 notifications per consumer and state.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _query(args: argparse.Namespace) -> int:
    from opendmp.config import Settings
    from opendmp.db import make_engine, read_transaction

    from .config import PixConfig
    from .hl7v2.iti9 import format_cx
    from .hl7v2.message import parse_cx_text
    from .manager import PixManager
    from .model import PixError, Query

    settings = Settings.from_env()
    mgr = PixManager(PixConfig.from_settings(settings.env))
    try:
        c = parse_cx_text(args.cx)
        ident = mgr.identifier(c.id, c.namespace, c.universal_id, c.universal_id_type, c.type_code)
        domains = []
        for hd in args.domain:
            parts = (hd.split("&") + ["", "", ""])[:3]
            domains.append(mgr.resolve_domain(parts[0] or None, parts[1] or None, parts[2] or None).key)
        with read_transaction(make_engine(settings.database_url)) as conn:
            found = mgr.query(conn, Query(ident, tuple(domains))).identifiers
    except PixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i in found:
        print(format_cx(mgr, i))
    if not found:
        print("(no identifier in the requested domains)", file=sys.stderr)
    return 0


def _outbox(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from opendmp.config import Settings
    from opendmp.db import make_engine, read_transaction
    from opendmp.schema import pix_outbox as O

    names = {0: "pending", 1: "delivered", 2: "rejected"}
    settings = Settings.from_env()
    with read_transaction(make_engine(settings.database_url)) as conn:
        rows = conn.execute(select(O.c.consumer, O.c.state, func.count(), func.max(O.c.attempts))
                            .group_by(O.c.consumer, O.c.state)
                            .order_by(O.c.consumer, O.c.state)).all()
    for consumer, state, count, attempts in rows:
        print(f"{consumer}\t{names.get(state, state)}\t{count}\tmax attempts {attempts}")
    return 0


def register(sub) -> None:
    pix = sub.add_parser("pix", help="PIX Manager: query identifiers, ITI-10 outbox")
    pix_sub = pix.add_subparsers(dest="pix_command", required=True)
    q = pix_sub.add_parser("query", help="identifiers linked to CX (as ITI-9 answers)")
    q.add_argument("cx", help="e.g. 'IPP123^^^HOSP&1.2.3&ISO'")
    q.add_argument("--domain", action="append", default=[], help="NS&OID&ISO (repeatable)")
    q.set_defaults(func=_query)
    o = pix_sub.add_parser("outbox", help="ITI-10 notifications per consumer and state")
    o.set_defaults(func=_outbox)
