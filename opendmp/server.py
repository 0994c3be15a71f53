"""Run the WSGI application under gunicorn from Python (``opendmp serve``)."""
from __future__ import annotations

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        return create_app()


def run_gunicorn(host: str, port: int, workers: int = 2, threads: int = 4) -> int:
    """Start gunicorn (gthread workers) and block until it stops."""
    _Gunicorn({
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        # gunicorn 27's control socket defaults to one path per user: several servers
        # (tests, benchmarks, nodes sharing a home) would fight over it.
        "control_socket_disable": True,
    }).run()
    return 0
