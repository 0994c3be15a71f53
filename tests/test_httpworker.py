"""The gunicorn worker of ``opendmp serve`` (opendmp.httpworker): gthread, serving a
keep-alive connection's next request in the same thread when it arrives quickly — and
never keeping a thread from another connection that waits for one.

Real server (one worker, one thread, so that any monopoly would show), raw sockets
speaking HTTP/1.1 keep-alive."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from harness import ServerProcess

REQUEST = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def one_thread_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("httpworker")
    with ServerProcess(f"sqlite:///{home / 'db.sqlite3'}", home=home,
                       env={"OPENDMP_WORKERS": 1, "OPENDMP_THREADS": 1}) as srv:
        yield srv


def _connect(server) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def _exchange(sock: socket.socket, request: bytes = REQUEST) -> bytes:
    """Send one request, read exactly one response (Content-Length framed); its body."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers.get(b"Connection", b"").lower() != b"close"
    length = int(headers[b"Content-Length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    assert len(body) == length  # nothing beyond: one response per request
    return body


def test_one_connection_serves_requests_back_to_back_and_after_pauses(one_thread_server):
    with _connect(one_thread_server) as sock:
        for _ in range(200):  # back to back: served by the thread that answered the last
            assert b'"status"' in _exchange(sock)
        for pause in (0.001, 0.005, 0.05, 0.2):  # longer than the linger: via the poller
            time.sleep(pause)
            assert b'"status"' in _exchange(sock)
        # two requests in one segment (pipelined): the second one is already buffered
        sock.sendall(REQUEST + REQUEST)
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"HTTP/1.1 200") < 2 and time.monotonic() < deadline:
            data += sock.recv(65536)
        assert data.count(b"HTTP/1.1 200") == 2


def test_a_busy_keep_alive_client_does_not_keep_the_thread_from_another(one_thread_server):
    """Client A pipelines requests on one connection for up to 6 s, so its next request
    is always there when a response is done: the worker's only thread would go on
    serving it. Client B's request must be answered while A is still being served
    (gthread queues B's connection for a thread; the thread hands A back to the poller
    when a connection waits)."""
    stop = threading.Event()
    a_answers: list[float] = []
    a_stopped = []
    sock_a = _connect(one_thread_server)

    def a_writer() -> None:
        try:
            while not stop.is_set():
                sock_a.sendall(REQUEST * 20)
        except OSError:
            pass

    def a_reader() -> None:
        buf = b""
        deadline = time.monotonic() + 6
        try:
            while time.monotonic() < deadline and not stop.is_set():
                chunk = sock_a.recv(65536)
                if not chunk:
                    break
                buf += chunk
                n = buf.count(b"HTTP/1.1 200")
                if n:
                    a_answers.extend([time.monotonic()] * n)
                    buf = buf[buf.rindex(b"HTTP/1.1 200") + 1:]
        except OSError:
            pass
        a_stopped.append(time.monotonic())
        stop.set()

    threads = [threading.Thread(target=a_writer), threading.Thread(target=a_reader)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        assert a_answers, "client A got no answer"
        with _connect(one_thread_server) as sock:
            _exchange(sock)
            answered_b = time.monotonic()
        assert not a_stopped, "client B was answered only once client A stopped"
        time.sleep(0.2)
        assert a_answers[-1] > answered_b  # and A is still being served
    finally:
        stop.set()
        sock_a.shutdown(socket.SHUT_RDWR)
        sock_a.close()
        for t in threads:
            t.join(20)
