"""Refused TLS handshakes audited (ITI TF-2a §3.19.6, ATNA "node authentication
failure"): a DICOM Security Alert (110113) with EventTypeCode 110126 Node Authentication,
the refused peer's address as a participant, on every TLS listener:

* HTTP (gunicorn): :func:`http_ssl_context` is the ``ssl_context`` server hook; it
  returns one :class:`AuditingContext` per worker process, whose ``wrap_socket`` (where
  gunicorn's worker makes the server-side handshake, ``do_handshake_on_connect``) reports
  a refused handshake before re-raising. Gunicorn itself only logs it at debug level;
* MLLP: :class:`pix.mllp.MllpServer` makes the handshake per connection and calls
  ``on_tls_refused`` (:func:`reporter`);
* syslog (the ARR): :mod:`atna.receiver` queues the alert into its own store.

A peer that fails its handshake a thousand times a second must not flood the trail:
at most :data:`PER_SECOND` alerts a second per process are emitted, the others counted
in the next alert's description.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Callable, Mapping

from . import events as ev

log = logging.getLogger("opendmp.atna")

PER_SECOND = 20

Report = Callable[[str | None, str], None]


class HandshakeReporter:
    """``reporter(address, reason)``: emit the Security Alert of a refused handshake."""

    def __init__(self, auditor, listener: str, per_second: int = PER_SECOND) -> None:
        self.auditor = auditor
        self.listener = listener
        self.per_second = per_second
        self._lock = threading.Lock()
        self._second = 0
        self._count = 0
        self._suppressed = 0

    def __call__(self, address: str | None, reason: str) -> None:
        now = int(time.monotonic())
        with self._lock:
            if now != self._second:
                self._second, self._count = now, 0
            self._count += 1
            if self._count > self.per_second:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
        text = f"{self.listener}: TLS handshake refused: {reason}"
        if suppressed:
            text += f" ({suppressed} more refused handshakes not reported individually)"
        listener = self.listener
        self.auditor.submit(lambda: ev.security_alert(ev.NODE_AUTHENTICATION, listener, text,
                                                      address))


def reporter(env: Mapping[str, str], home, listener: str) -> HandshakeReporter | None:
    """A reporter spooling through this process's :class:`~atna.auditor.Auditor`; None
    when auditing is off (``OPENDMP_AUDIT_REPOSITORIES=none``)."""
    from .auditor import Auditor, AuditSettings

    auditor = Auditor(AuditSettings.from_env(env), home,
                      fsync=env.get("OPENDMP_AUDIT_FSYNC", "1") != "0")
    return HandshakeReporter(auditor, listener) if auditor.enabled else None


class AuditingContext(ssl.SSLContext):
    """A server SSLContext whose ``wrap_socket`` reports refused handshakes."""

    on_refused: Report | None = None

    def wrap_socket(self, sock, *args, **kwargs):
        try:  # before: a failed handshake closes the (detached) socket
            address = sock.getpeername()[0]
        except (OSError, IndexError):
            address = None
        try:
            return super().wrap_socket(sock, *args, **kwargs)
        except (ssl.SSLError, OSError) as exc:
            report = self.on_refused
            if report is not None and is_refusal(exc):
                try:
                    report(address, getattr(exc, "reason", None) or str(exc) or type(exc).__name__)
                except Exception:  # noqa: BLE001 - reporting never changes the refusal
                    log.exception("could not audit a refused TLS handshake")
            raise


def is_refusal(exc: BaseException) -> bool:
    """Whether a failed handshake is a refusal to audit: the peer presented no
    certificate, an untrusted one, or spoke something else than TLS — not a peer that
    connected and went away before the handshake ended (a port probe, a health check,
    a reset): it presented nothing to refuse. Those are only logged."""
    if isinstance(exc, (ssl.SSLEOFError, ConnectionError)):
        return False
    return isinstance(exc, (ssl.SSLError, TimeoutError))


def server_context(cert: str, key: str, ca: str,
                   on_refused: Report | None = None) -> AuditingContext:
    """TLS >= 1.2, the node's certificate, client certificates required from ``ca``."""
    ctx = AuditingContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.on_refused = on_refused
    return ctx


_http_context: tuple[int, AuditingContext] | None = None
_http_lock = threading.Lock()


def http_ssl_context(conf, default_factory) -> ssl.SSLContext:
    """Gunicorn's ``ssl_context`` hook. Gunicorn calls it for every connection; the
    context (certificate chain and trust store parsed once) is made once per worker."""
    import os

    global _http_context
    current = _http_context
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _http_lock:
        if _http_context is None or _http_context[0] != os.getpid():
            from opendmp.config import Settings

            settings = Settings.from_env()
            # gunicorn's default_factory is not used: it builds a plain SSLContext (and
            # HTTP/2's ALPN, which OpenDMP does not enable)
            ctx = server_context(conf.certfile, conf.keyfile, conf.ca_certs,
                                 reporter(settings.env, settings.home, "https"))
            if conf.ciphers:
                ctx.set_ciphers(conf.ciphers)
            _http_context = (os.getpid(), ctx)
        return _http_context[1]
