"""``opendmp audit ...`` (the audit trail) and ``opendmp ca ...`` (development PKI)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _settings():
    from opendmp.config import Settings

    settings = Settings.from_env()
    settings.ensure_home()
    return settings


def _audit_list(args: argparse.Namespace) -> int:
    from opendmp.db import make_engine, migrate, read_transaction

    from .http import BadRequest, query_from_params
    from .query import iso, run_query, to_json

    params: list[tuple[str, str]] = []
    for name in ("patient", "since", "until", "event", "transaction", "user", "entity", "outcome",
                 "address", "source"):
        for value in getattr(args, name) or []:
            params.append((name, value))
    params.append(("limit", str(args.limit)))
    try:
        q = query_from_params(params, fhir=False)
    except BadRequest as exc:
        print(f"opendmp audit: {exc}", file=sys.stderr)
        return 2
    settings = _settings()
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    with read_transaction(engine) as conn:
        items = run_query(conn, q)
    if args.json:
        print(json.dumps([to_json(i, with_xml=args.xml) for i in items], indent=1, ensure_ascii=False))
        return 0
    for i in items:
        rec = i.record
        requestors = [p.user_id for p in rec.participants if p.is_requestor] or \
            [p.user_id for p in rec.participants][:1]
        types = ",".join(c.code for c in rec.event_types) or "-"
        print(f"{iso(rec.event_time)}  {rec.event_id.code:<7} {types:<8} outcome={rec.outcome:<2} "
              f"by={'|'.join(requestors) or '-'} patient={'|'.join(rec.patient_ids) or '-'} "
              f"docs={len(rec.document_ids)} src={rec.source_id or '-'} via={i.transport}"
              f"{'' if i.valid else ' (schema-invalid)'}")
    print(f"{len(items)} audit event(s)", file=sys.stderr)
    return 0


def _audit_stats(args: argparse.Namespace) -> int:
    from .service import stats_path

    path = stats_path(_settings().home)
    try:
        print(path.read_text())
    except FileNotFoundError:
        print("{}")
        return 1
    return 0


def _audit_history(args: argparse.Namespace) -> int:
    """The patient's access history (CSP art. L. 1111-19, :mod:`atna.history`): who
    consulted, submitted, retrieved what in their record, when, how; refusals included."""
    from opendmp.db import make_engine, migrate, read_transaction

    from .auditor import AuditSettings
    from .http import patient_history

    settings = _settings()
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    own = AuditSettings.from_env(settings.env).source_id
    with read_transaction(engine) as conn:
        found = patient_history(conn, args.patient, args.limit, own)
    if args.json:
        print(json.dumps({"patient": args.patient, "count": len(found),
                          "accesses": [a.to_json() for a in found]}, indent=1, ensure_ascii=False))
        return 0
    for a in found:
        who = a.user_name or a.user or "-"
        print(f"{a.to_json()['time']}  {a.access:<16} {a.transaction or '-':<7} {a.result:<8} "
              f"by={who} node={a.node or '-'} mode={a.access_mode or '-'}"
              f"{' docs=' + ','.join(a.documents) if a.documents else ''}"
              f"{' set=' + a.submission_set if a.submission_set else ''}")
    print(f"{len(found)} access(es)", file=sys.stderr)
    return 0


def _ca_init(args: argparse.Namespace) -> int:
    from .pki import init_ca, pki_dir

    directory = Path(args.dir) if args.dir else pki_dir(_settings().home)
    ca = init_ca(directory)
    print(f"development CA: {ca}")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from .pki import issue, pki_dir

    directory = Path(args.dir) if args.dir else pki_dir(_settings().home)
    pem, key = issue(directory, args.name, args.host)
    print(f"certificate {pem}\nkey {key}\ntrust store {directory / 'ca.pem'}")
    return 0


def register(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="the audit trail (ATNA Audit Record Repository)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    lst = audit_sub.add_parser("list", help="audit events, newest first")
    lst.add_argument("--patient", action="append", help="patient id (CX)")
    lst.add_argument("--since", action="append", help="date or dateTime (inclusive)")
    lst.add_argument("--until", action="append", help="date (inclusive) or dateTime (exclusive)")
    lst.add_argument("--event", action="append", help="EventID code, e.g. 110112")
    lst.add_argument("--transaction", action="append", help="EventTypeCode, e.g. ITI-18")
    lst.add_argument("--user", action="append", help="active participant user id")
    lst.add_argument("--entity", action="append", help="document / submission set / object id")
    lst.add_argument("--outcome", action="append", help="0, 4, 8 or 12")
    lst.add_argument("--address", action="append", help="network access point")
    lst.add_argument("--source", action="append", help="AuditSourceID")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--xml", action="store_true", help="with --json: include the original XML")
    lst.set_defaults(func=_audit_list)
    hist = audit_sub.add_parser("history", help="a patient's access history")
    hist.add_argument("patient", help="patient id (CX), e.g. the INS")
    hist.add_argument("--limit", type=int, default=1000)
    hist.add_argument("--json", action="store_true")
    hist.set_defaults(func=_audit_history)
    stats = audit_sub.add_parser("stats", help="the ARR's counters (received, stored, refused ...)")
    stats.set_defaults(func=_audit_stats)

    ca = subparsers.add_parser("ca", help="development PKI for node authentication (ITI-19)")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="create the development CA")
    init.add_argument("--dir", help="default $OPENDMP_HOME/pki")
    init.set_defaults(func=_ca_init)
    iss = ca_sub.add_parser("issue", help="a node certificate (server and client auth)")
    iss.add_argument("name")
    iss.add_argument("--host", action="append", help="extra DNS name or IP for the SAN")
    iss.add_argument("--dir", help="default $OPENDMP_HOME/pki")
    iss.set_defaults(func=_ca_issue)
