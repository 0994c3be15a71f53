"""ATNA wiring: the processes ``opendmp serve`` starts (the Audit Record Repository and the
spool sender), and what the WSGI application adds (audited endpoints, audit routes)."""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import threading
from pathlib import Path

from .auditor import Auditor, AuditSettings
from .pki import client_context, server_context, tls_files
from .spool import spool_dir

log = logging.getLogger("opendmp.atna")


def stats_path(home: Path) -> Path:
    return home / "atna" / "arr-stats.json"


def run_arr(settings, audit: AuditSettings) -> None:
    """Listener target: the ARR (TLS + UDP) until SIGTERM, then store what it received."""
    from .receiver import AuditRecordRepository

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ctx = server_context(tls_files(settings.env, settings.home)) if audit.tls_port else None
    arr = AuditRecordRepository(settings.database_url, ctx, audit.host, audit.tls_port,
                                audit.udp_port, stats_path(settings.home), audit.max_frame,
                                tcp_port=audit.tcp_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(arr.serve())
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        done, _ = await asyncio.wait([task, asyncio.create_task(stopping.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        task.cancel()
        # store what was received before stopping
        await arr.stop(timeout=8)  # opendmp serve kills us after 10 s

    asyncio.run(main())


def run_sender(settings, audit: AuditSettings) -> None:
    """Listener target: deliver the spool to every configured ARR until SIGTERM."""
    from .sender import run_senders

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ctx = None
    if any(d.scheme == "tls" for d in audit.destinations):
        ctx = client_context(tls_files(settings.env, settings.home))
    run_senders(spool_dir(settings.home), list(audit.destinations), ctx, stop)


def atna_listeners(settings, host: str, tls_port: int | None = None,
                   udp_port: int | None = None) -> list:
    """The ATNA listeners for ``opendmp serve``, and the application start/stop audit."""
    from opendmp.server import Listener

    from . import events as ev

    # --audit-*-port: put them in the environment the gunicorn workers inherit
    if tls_port is not None:
        os.environ["OPENDMP_AUDIT_TLS_PORT"] = str(tls_port)
        settings.env["OPENDMP_AUDIT_TLS_PORT"] = str(tls_port)
    if udp_port is not None:
        os.environ["OPENDMP_AUDIT_UDP_PORT"] = str(udp_port)
        settings.env["OPENDMP_AUDIT_UDP_PORT"] = str(udp_port)
    os.environ.setdefault("OPENDMP_AUDIT_HOST", host)
    settings.env.setdefault("OPENDMP_AUDIT_HOST", host)
    audit = AuditSettings.from_env(settings.env, host)
    listeners = []
    if audit.tls_port or audit.udp_port or audit.tcp_port:
        if audit.tls_port:
            tls_files(settings.env, settings.home)  # create the development PKI now, once
        listeners.append(Listener("atna-arr", lambda: run_arr(settings, audit)))
    if audit.destinations:
        listeners.append(Listener("atna-sender", lambda: run_sender(settings, audit)))
        auditor = Auditor(audit, settings.home)
        auditor.emit(ev.application_activity(True, "opendmp serve", launcher=_user()))
        serve_pid = os.getpid()

        def _stopped() -> None:
            if os.getpid() == serve_pid:  # not in forked gunicorn workers
                auditor.emit(ev.application_activity(False, "opendmp serve", launcher=_user()))

        atexit.register(_stopped)
    return listeners


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


def wsgi_parts(settings, engine, endpoints: list, repository=None) -> tuple[list, dict, object]:
    """Audited endpoints, the audit routes and the audit of the plain-HTTP health-data
    reads (:func:`atna.hooks.health_data_reads`, for :func:`cda.web.routes`) for
    :func:`opendmp.app.create_app`."""
    from opendmp.policy import HttpReaders
    from .hooks import AuditedRegistryGateway, audit_endpoint, health_data_reads
    from .http import audit_routes

    audit = AuditSettings.from_env(settings.env)
    auditor = Auditor(audit, settings.home, sync=settings.env.get("OPENDMP_AUDIT_SYNC") == "1",
                      fsync=settings.env.get("OPENDMP_AUDIT_FSYNC", "1") != "0",
                      group_seconds=int(settings.env.get("OPENDMP_AUDIT_GROUP_MS", 10)) / 1000)
    if repository is not None and getattr(repository.settings, "registry_url", None) and auditor.enabled:
        repository.registry = AuditedRegistryGateway(repository.registry,
                                                     repository.settings.registry_url, auditor)
    routes = audit_routes(engine, HttpReaders.from_env(settings.env),
                          auditor if auditor.enabled else None, audit.source_id)
    return ([audit_endpoint(ep, auditor) for ep in endpoints], routes,
            health_data_reads(auditor))
