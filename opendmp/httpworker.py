"""The gunicorn worker of ``opendmp serve``: gunicorn's threaded worker (``gthread``),
which serves a keep-alive connection's next request in the same thread when it arrives
quickly.

gthread hands every request of a keep-alive connection over twice: the main thread
polls the idle connection and submits it to the thread pool; after the response, the
pool thread wakes the main thread through a pipe to register the connection with the
poller again. Per request that is two thread switches, a pipe write and read, two
``epoll_ctl`` and two ``fcntl``/``ioctl`` calls — about 0.04 ms of CPU for a bare WSGI
application (``benchmarks/README.md``, "ITI-43 CPU per request"). A client sending
requests back to back (an XDS consumer retrieving a patient's documents, a source
submitting a batch) has its next request on the socket within microseconds of the
response.

So after a response on a keep-alive connection the thread waits up to
:data:`LINGER` seconds for the next request and serves it itself — only while the
worker has no more open connections than threads and none is queued for a thread, so
that one client cannot keep a thread from the others. With more connections than
threads the worker behaves as gthread: lingering there cost more CPU per request than it
saved (measured with 16 connections on 2 x 4 threads). Everything else (timeouts,
graceful shutdown, TLS, HTTP parsing) is gthread's.
"""
from __future__ import annotations

import select

from gunicorn.workers.gthread import ThreadWorker as _GThreadWorker

#: how long (s) a thread keeps an idle keep-alive connection before handing it back to
#: the main loop's poller
LINGER = 0.002


class ThreadWorker(_GThreadWorker):
    def handle(self, conn):
        keepalive = super().handle(conn)
        while keepalive is True and self.alive and self._no_one_waiting() and \
                _next_request_arrives(conn, LINGER):
            keepalive = super().handle(conn)
        return keepalive

    def _no_one_waiting(self) -> bool:
        # every open connection can have a thread of its own (more connections than
        # threads: gthread's hand-over is what shares them), and none is queued for one
        return self.nr_conns <= self.cfg.threads and self.tpool._work_queue.empty()


def _next_request_arrives(conn, timeout: float) -> bool:
    """Whether bytes of the next request are buffered or arrive within ``timeout``."""
    if conn.parser is not None and conn.parser.unreader.buf.getvalue():
        return True
    sock = conn.sock
    pending = getattr(sock, "pending", None)  # TLS: decrypted bytes already read
    if pending is not None and pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], timeout)
    except (OSError, ValueError):  # closed meanwhile
        return False
    return bool(readable)
