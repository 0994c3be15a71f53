"""Run the system from Python (``opendmp serve``): gunicorn for the SOAP/HTTP endpoints,
plus one child process per non-HTTP listener (MLLP for PIX, syslog for ATNA)."""
from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from typing import Callable

from gunicorn.app.base import BaseApplication

from . import memory

log = logging.getLogger("opendmp.serve")


@dataclass(frozen=True)
class Listener:
    """A non-HTTP server run beside gunicorn: ``target`` blocks serving until killed."""

    name: str
    target: Callable[[], None]


def start_listeners(listeners: list[Listener]) -> list[multiprocessing.Process]:
    """Start each listener in its own (daemon) process; they die with ``opendmp serve``."""
    procs = []
    for listener in listeners:
        proc = multiprocessing.Process(target=listener.target, name=listener.name, daemon=True)
        proc.start()
        log.info("started %s (pid %s)", listener.name, proc.pid)
        procs.append(proc)
    return procs


def stop_listeners(procs: list[multiprocessing.Process]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        """Build the application, once, in the gunicorn master (``preload_app``): the
        workers fork with it loaded and share its pages, and its import garbage is
        released before the fork (:mod:`opendmp.memory`). A new worker (after a
        crash or a timeout) starts without importing anything."""
        import os

        from soapstack.mtom import READ_SIZE

        from .app import create_app

        memory.limit_malloc_arenas(memory.malloc_arenas(os.environ))
        memory.cap_body_read_ahead(READ_SIZE)
        app = create_app()
        memory.release_free_memory()
        return app


def _tls_options(tls) -> dict:
    """Mutual TLS for the HTTP endpoints (ITI-19 node authentication): the node's
    certificate, client certificates required from the trust store, TLS >= 1.2; the
    handshake is made in ``wrap_socket`` (in the worker thread), where
    :func:`atna.nodeauth.http_ssl_context`'s context audits a refused one."""
    import ssl

    from atna.nodeauth import http_ssl_context

    return {"certfile": str(tls.cert), "keyfile": str(tls.key), "ca_certs": str(tls.ca),
            "cert_reqs": ssl.CERT_REQUIRED, "ssl_context": http_ssl_context,
            "do_handshake_on_connect": True}


def run_gunicorn(host: str, port: int, workers: int = 2, threads: int = 4, tls=None,
                 access_log: str | None = None) -> int:
    """Start gunicorn (gthread workers) and block until it stops; with ``tls``
    (an ``atna.pki.TlsFiles``) every connection needs a trusted client certificate.

    ``access_log`` (``OPENDMP_ACCESS_LOG``): ``-`` for standard output, a file path, or
    None (default): no access log. Every transaction is audited by ATNA already; a
    line per request written by the worker costs CPU on the request path."""
    options = _tls_options(tls) if tls is not None else {}
    _Gunicorn({
        **options,
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "opendmp.httpworker.ThreadWorker",  # gthread, see there
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": access_log or None,
        "errorlog": "-",
        "loglevel": "info",
        # gunicorn 27's control socket defaults to one path per user: several servers
        # (tests, benchmarks, nodes sharing a home) would fight over it.
        "control_socket_disable": True,
        "pre_fork": memory.freeze_before_fork,
        # the application is loaded once, in the master (opendmp.memory)
        "preload_app": True,
    }).run()
    return 0
