"""The ``opendmp`` command: serve, patient, testkit."""
from __future__ import annotations

import argparse
import os
import sys

from .config import Settings


def _serve(args: argparse.Namespace) -> int:
    if sys.argv[1:2] == ["serve"]:  # the process's own command (not main(argv) in-process)
        from .memory import reexec_optimized  # python -OO: no docstrings in memory

        reexec_optimized(sys.argv[1:], dict(os.environ))
    from .db import migrate_in_child
    from .server import Listener, run_gunicorn, start_listeners, stop_listeners

    settings = Settings.from_env()
    settings.ensure_home()
    migrate_in_child(settings.database_url)  # Alembic stays out of the workers' memory
    _recover_repository(settings)
    listeners: list[Listener] = []
    from pix.listener import listeners as pix_listeners  # PIX Manager: MLLP + ITI-10

    listeners += pix_listeners(settings.env, args.host, args.mllp_port)
    from atna.service import atna_listeners  # ATNA: Audit Record Repository + spool sender

    listeners += atna_listeners(settings, args.host, args.audit_tls_port, args.audit_udp_port)
    parent = os.getpid()
    procs = start_listeners(listeners)
    try:
        return run_gunicorn(args.host, args.port, workers=args.workers, threads=args.threads,
                            tls=_http_tls(settings, args),
                            access_log=settings.env.get("OPENDMP_ACCESS_LOG") or None)
    finally:
        if os.getpid() == parent:
            stop_listeners(procs)
        else:
            # A gunicorn worker (forked from this process) is exiting through here: the
            # listeners are not its children; without this, its stop_listeners and
            # multiprocessing's atexit hook would terminate them.
            import multiprocessing.process as mp_process

            for proc in procs:
                mp_process._children.discard(proc)


def _http_tls(settings: Settings, args: argparse.Namespace):
    """The node's TLS files when the HTTP endpoints require mutual TLS (``--tls`` or
    ``OPENDMP_HTTP_TLS=1``); the development PKI is made on first use (atna.pki)."""
    if not (args.tls or settings.env.get("OPENDMP_HTTP_TLS", "") in ("1", "true", "yes")):
        return None
    from atna.pki import tls_files

    return tls_files(settings.env, settings.home)


def _recover_repository(settings: Settings) -> None:
    """Settle what a crashed ITI-41 left (repository.recovery) before serving."""
    from registry.affinity import AffinityDomain
    from repository.actor import open_repository
    from repository.recovery import recover

    from .db import make_engine

    engine = make_engine(settings.database_url)
    domain = AffinityDomain.from_settings(settings.env)
    recover(open_repository(settings.env, settings.home, engine, domain))
    engine.dispose()


def _patient_add(args: argparse.Namespace) -> int:
    from registry.affinity import AffinityDomain
    from registry.hl7types import HL7TypeError, parse_cx
    from registry.store import add_patient

    from .db import make_engine, migrate, write_transaction

    settings = Settings.from_env()
    settings.ensure_home()
    domain = AffinityDomain.from_settings(settings.env)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    status = 0
    for cx in args.cx:
        try:
            canonical = parse_cx(cx).canonical
        except HL7TypeError as exc:
            print(f"refused {cx}: {exc}", file=sys.stderr)
            status = 2
            continue
        if not domain.patient_domain.accepts(cx):
            print(f"refused {cx}: assigning authority not in the affinity domain "
                  f"(OPENDMP_PATIENT_DOMAINS)", file=sys.stderr)
            status = 2
            continue
        with write_transaction(engine) as conn:
            add_patient(conn, canonical)
        print(f"patient {canonical} registered")
    return status


def _keys(args: argparse.Namespace) -> int:
    """Master keys of the document store (repository.keys): rotate, rewrap, usage."""
    from repository.keys import load_keyring, rotate
    from repository.storage import open_store

    settings = Settings.from_env()
    if args.keys_command == "rotate":
        key_id = rotate(settings.home)
        print(f"new master key {key_id}; restart the servers, then run "
              "`opendmp keys rewrap`, check `opendmp keys usage`, then remove the old key file")
        return 0
    keyring = load_keyring(settings.env, settings.home)
    store = open_store(settings.env, settings.home, keyring)
    if args.keys_command == "rewrap":
        result = store.rewrap(keyring)
        print(f"re-wrapped {result.rewrapped} documents under {keyring.current.key_id}; "
              f"{result.already_current} already were; {len(result.failed)} failed")
        for key, reason in result.failed.items():
            print(f"  {key}: {reason}", file=sys.stderr)
        return 1 if result.failed else 0
    for key_id, count in sorted(store.key_usage().items()):
        marker = " (current)" if key_id == keyring.current.key_id else ""
        print(f"{key_id}{marker}: {count} documents")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opendmp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start every OpenDMP actor (gunicorn)")
    serve.add_argument("--host", default=os.environ.get("OPENDMP_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("OPENDMP_PORT", 8080)))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("OPENDMP_WORKERS", 2)))
    serve.add_argument("--tls", action="store_true",
                       help="require mutual TLS on the HTTP endpoints (OPENDMP_HTTP_TLS=1)")
    serve.add_argument("--threads", type=int, default=int(os.environ.get("OPENDMP_THREADS", 4)))
    serve.add_argument("--mllp-port", type=int,
                       default=int(os.environ.get("OPENDMP_MLLP_PORT") or 2575),
                       help="PIX Manager MLLP port (ITI-8/ITI-9); 0 turns it off")
    serve.add_argument("--audit-tls-port", type=int, default=None,
                       help="ATNA syslog over TLS (RFC 5425) port, default 6514; 0 turns it off")
    serve.add_argument("--audit-udp-port", type=int, default=None,
                       help="ATNA syslog over UDP (RFC 5426) port, default 5514; 0 turns it off")
    serve.set_defaults(func=_serve)

    patient = sub.add_parser("patient", help="patient identifiers of the affinity domain")
    patient_sub = patient.add_subparsers(dest="patient_command", required=True)
    add = patient_sub.add_parser("add", help="register patient identifiers (HL7 CX)")
    add.add_argument("cx", nargs="+", help="e.g. '1234567890123^^^&1.2.250.1.213.1.4.8&ISO^NH'")
    add.set_defaults(func=_patient_add)

    keys = sub.add_parser("keys", help="master keys of the encrypted document store")
    keys.add_argument("keys_command", choices=["rotate", "rewrap", "usage"])
    keys.set_defaults(func=_keys)

    try:
        from testkit.cli import register as register_testkit
    except ImportError:  # the conformance runner is optional at run time
        register_testkit = None
    if register_testkit is not None:
        register_testkit(sub)

    from pix.cli import register as register_pix  # opendmp pix query|outbox
    register_pix(sub)

    from cda.cli import register as register_cda  # push, cda validate|metadata|render
    register_cda(sub)

    from atna.cli import register as register_atna  # audit list|history|stats, ca init|issue
    register_atna(sub)

    from xua.cli import register as register_xua  # idp issue|cert (development IdP)
    register_xua(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
