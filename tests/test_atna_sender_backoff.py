"""The audit sender backs off when a destination refuses its messages (RFC 5426 UDP to a
closed port: each send after the first is refused by the ICMP port-unreachable answer),
instead of reconnecting and re-sending in a tight loop; once the ARR listens, the spooled
messages arrive."""
from __future__ import annotations

import socket
import threading
import time

from atna.auditor import Destination, pack
from atna.sender import DestinationSender
from atna.spool import Spool


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refusing_udp_destination_is_retried_with_backoff_then_served(tmp_path):
    spool_dir = tmp_path / "spool"
    Spool(spool_dir, fsync=False).append_many(
        [pack(b"<AuditMessage n='%d'/>" % i, 1_700_000_000_000_000 + i) for i in range(3)])
    port = _closed_udp_port()
    stop = threading.Event()
    sender = DestinationSender(spool_dir, Destination("udp", "127.0.0.1", port), None, stop)
    connects = []
    real_connect = sender._connect

    def counted_connect():
        connects.append(time.monotonic())
        return real_connect()

    sender._connect = counted_connect
    sender.start()
    try:
        time.sleep(1.5)
        # backoff 0.2, 0.4, 0.8 s: a handful of attempts, not thousands
        assert 1 <= len(connects) <= 6, len(connects)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as arr:
            arr.bind(("127.0.0.1", port))
            arr.settimeout(10)
            received = [arr.recv(65535) for _ in range(3)]
        assert [b"<AuditMessage n='%d'/>" % i in r for i, r in enumerate(received)] == \
            [True] * 3
    finally:
        stop.set()
        sender.join(10)
