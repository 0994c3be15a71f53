"""The PIX Manager's process(es) under ``opendmp serve``: MLLP listener + ITI-10 dispatcher.

Settings (embedded defaults):

==============================  =========  ==============================================
``OPENDMP_MLLP_PORT``           ``2575``   ``--mllp-port``; ``0`` turns the listener off
``OPENDMP_MLLP_HOST``           ``--host`` address to bind
``OPENDMP_MLLP_PROCESSES``      ``2``      listener processes accepting on the port (1 on one CPU)
``OPENDMP_MLLP_MAX_BYTES``      ``1048576`` largest message; larger ones close the connection
``OPENDMP_MLLP_IDLE_SECONDS``   ``300``    idle connections are closed after this
``OPENDMP_MLLP_THREADS``        ``8``      messages handled at once per process
``OPENDMP_MLLP_TLS_CERT/KEY/CA``  unset    TLS (and client certificates with a CA)
``OPENDMP_PIX_DISPATCH_SECONDS``  ``0.5``  how often the ITI-10 outbox is looked at
``OPENDMP_PIX_MAX_BACKOFF_SECONDS`` ``300`` longest wait between retries to a consumer
==============================  =========  ==============================================

Counters (connections, messages, framing errors, oversized, idle closes) are logged when
they change and written to ``$OPENDMP_HOME/mllp-stats-<port>-<n>.json``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from opendmp.server import Listener

__all__ = ["listeners", "run", "DEFAULT_PORT"]

log = logging.getLogger("opendmp.pix.listener")

DEFAULT_PORT = 2575


def listeners(env: dict[str, str], host: str, port: int) -> list[Listener]:
    """The :class:`~opendmp.server.Listener` s ``opendmp serve`` starts for PIX.

    The MLLP socket is bound here, in the serving process, and inherited by the listener
    processes, which all accept on it (pre-fork, like gunicorn): a port already in use is
    reported once, and a second ``opendmp serve`` cannot silently share the port.
    """
    if port <= 0:
        return []
    host = env.get("OPENDMP_MLLP_HOST") or host
    n = max(1, int(env.get("OPENDMP_MLLP_PROCESSES") or min(2, os.cpu_count() or 1)))
    try:
        sock = socket.create_server((host, port), backlog=512)
    except OSError as exc:
        log.error("PIX MLLP listener cannot bind %s:%d: %s (ITI-10 dispatch still runs)",
                  host, port, exc)
        sock, n = None, 1
    return [Listener(f"pix-mllp-{i}", partial(run, dict(env), host, port, i, sock))
            for i in range(n)]


def run(env: dict[str, str], host: str, port: int, index: int = 0,
        sock: socket.socket | None = None) -> None:
    """Serve MLLP on ``sock`` (and, in process 0, dispatch ITI-10) until killed."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_main(env, host, port, index, sock))
    except KeyboardInterrupt:
        pass


async def _main(env, host, port, index, sock) -> None:
    from opendmp.config import Settings
    from opendmp.db import make_engine

    from .config import PixConfig
    from .hl7v2.handler import Handler
    from .manager import PixManager
    from .mllp import MllpServer, tls_context_from_settings
    from .outbox import Notifier, dispatch_due

    settings = Settings.from_env(env)
    engine = make_engine(settings.database_url)
    config = PixConfig.from_settings(env)
    handler = Handler(engine, PixManager(config, Notifier(config)))
    observer, on_tls_refused, audit_notification = _atna(env, settings.home)
    server = MllpServer(
        handler.handle,
        max_message_bytes=int(env.get("OPENDMP_MLLP_MAX_BYTES") or 1 << 20),
        idle_timeout=float(env.get("OPENDMP_MLLP_IDLE_SECONDS") or 300),
        workers=int(env.get("OPENDMP_MLLP_THREADS") or 8),
        ssl_context=tls_context_from_settings(env),
        observer=observer,
        on_tls_refused=on_tls_refused,
    )
    if sock is not None:
        await server.start(sock=sock)
        log.info("PIX MLLP listener on %s:%d (process %d%s)", host, port, index,
                 ", TLS" if server.ssl_context else "")
    stats_path = settings.home / f"mllp-stats-{port}-{index}.json"
    interval = float(env.get("OPENDMP_PIX_DISPATCH_SECONDS") or 0.5)
    max_backoff = float(env.get("OPENDMP_PIX_MAX_BACKOFF_SECONDS") or 300)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iti10")
    loop = asyncio.get_running_loop()
    last = None
    while True:
        if index == 0 and config.consumers:
            try:
                await loop.run_in_executor(pool, partial(dispatch_due, engine, config,
                                                             max_backoff_s=max_backoff,
                                                             audit=audit_notification))
            except Exception:  # noqa: BLE001 - the dispatcher must keep running
                log.exception("ITI-10 dispatcher error")
        snap = server.stats.as_dict()
        if snap != last:
            log.info("MLLP counters: %s", json.dumps(snap))
            try:
                tmp = stats_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(snap))
                os.replace(tmp, stats_path)
            except OSError:
                pass
            last = snap
        await asyncio.sleep(interval)


def _atna(env: dict[str, str], home):
    """ATNA (atna.pixaudit, atna.nodeauth): the ITI-8/ITI-9 observer, the refused-handshake
    reporter and the ITI-10/ITI-46 delivery audit; Nones when auditing is off."""
    from atna.auditor import Auditor, AuditSettings
    from atna.nodeauth import HandshakeReporter
    from atna.pixaudit import mllp_observer, notification_audit

    auditor = Auditor(AuditSettings.from_env(env), home,
                      sync=env.get("OPENDMP_AUDIT_SYNC") == "1",
                      fsync=env.get("OPENDMP_AUDIT_FSYNC", "1") != "0")
    if not auditor.enabled:
        return None, None, None
    return (mllp_observer(auditor), HandshakeReporter(auditor, "mllp"),
            notification_audit(auditor))
