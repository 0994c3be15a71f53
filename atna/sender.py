"""Delivery of the spool to the Audit Record Repositories (one thread per destination).

Each destination has its own acknowledged position in the spool. Over TLS (RFC 5425) a
batch of records is written as octet-counted frames; syslog has no application-level
acknowledgement, so a record is acknowledged only once it was sent at least
``CONFIRM_SECONDS`` ago on a connection that is still open (the peer has not closed or
reset it). When the connection or a send fails, the sender waits (0.2 s, doubling up to
5 s, reset by a delivery), reconnects and re-sends everything after the acknowledged
position, in order: nothing is lost, and the few
records re-sent carry their spool sequence number (structured data
``[opendmp@32473 origin=... seq=...]``), so an OpenDMP ARR stores them once. Over UDP
(RFC 5426) a record is acknowledged when sent: UDP cannot do better.

Wake-ups: the sender reads the spool in batches. When a read finds nothing it sleeps
``IDLE_POLL``; after sending a batch that was not full it lingers ``LINGER`` so that the
next batch carries what arrived meanwhile (one read, one write and one syscall per batch
rather than per message when transactions come one at a time). The acknowledged position
is written (fsync'd) at most every ``ACK_EVERY`` seconds and at stop: a sender restarted
after a crash re-sends at most that much, which an OpenDMP ARR stores once.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

from .auditor import Destination, unpack
from .events import HOSTNAME
from .receiver import ORIGIN_SD
from .spool import SpoolReader, collect_garbage, origin_of
from .syslog import format_rfc5424, octet_frame

log = logging.getLogger("opendmp.atna.sender")

CONFIRM_SECONDS = 2.0
UDP_MAX = 65000
BATCH = 500
#: seconds between reads of the spool when it has nothing new
IDLE_POLL = 0.2
#: seconds to wait after a partial batch, so that the next one groups what arrives
LINGER = 0.1
#: seconds between writes of the acknowledged position
ACK_EVERY = 1.0


def syslog_message(payload: bytes, origin: str, seq: int) -> bytes:
    when_us, xml = unpack(payload)
    return format_rfc5424(
        xml, hostname=HOSTNAME, app_name="opendmp", procid=_PID,
        timestamp=datetime.fromtimestamp(when_us / 1_000_000, tz=timezone.utc),
        structured_data={ORIGIN_SD: {"origin": origin, "seq": str(seq)}})


_PID = str(os.getpid())


class DestinationSender(threading.Thread):
    def __init__(self, spool: Path, dest: Destination, ssl_context: ssl.SSLContext | None,
                 stop: threading.Event) -> None:
        super().__init__(name=f"atna-send-{dest.name}", daemon=True)
        self.spool = spool
        self.dest = dest
        self.ssl_context = ssl_context
        self.stop = stop
        self.reader = SpoolReader(spool, dest.name)
        self.origin = origin_of(spool)
        self.sent = 0
        self._acked: tuple[int, int] | None = None
        self._written: tuple[int, int] | None = None
        self._ack_time = 0.0

    # --------------------------------------------------------------- connection
    def _connect(self):
        if self.dest.scheme == "udp":
            family = socket.AF_INET6 if ":" in self.dest.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect((self.dest.host, self.dest.port))
            return sock
        raw = socket.create_connection((self.dest.host, self.dest.port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = self.ssl_context.wrap_socket(raw, server_hostname=self.dest.host)
        except BaseException:
            raw.close()
            raise
        conn.settimeout(30)
        return conn

    @staticmethod
    def _alive(conn) -> bool:
        """False when the peer closed or reset the connection (TLS)."""
        try:
            readable, _, _ = select.select([conn], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable and not (isinstance(conn, ssl.SSLSocket) and conn.pending()):
            return True
        conn.settimeout(0)
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    return False
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except (OSError, ssl.SSLError):
            return False
        finally:
            try:
                conn.settimeout(30)
            except OSError:
                pass

    # --------------------------------------------------------------- loop
    def _ack(self, position: tuple[int, int] | None, force: bool = False) -> None:
        """Record ``position`` as delivered; written at most every ``ACK_EVERY`` s."""
        if position is None:
            return
        self._acked = position
        now = time.monotonic()
        if position != self._written and (force or now - self._ack_time >= ACK_EVERY):
            self.reader.ack(*position)
            self._written, self._ack_time = position, now

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._ack(self._acked, force=True)

    def _run(self) -> None:
        udp = self.dest.scheme == "udp"
        acked = self._acked = self._written = self.reader.acked()
        self._ack_time = time.monotonic()
        pos = acked
        inflight: deque[tuple[tuple[int, int], float]] = deque()
        conn = None
        backoff = 0.2
        down_since = None
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = self._connect()
                    if down_since is not None:
                        log.info("ATNA: %s reachable again after %.0f s; re-sending from the spool",
                                 self.dest, time.monotonic() - down_since)
                        down_since = None
                except (OSError, ssl.SSLError) as exc:
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("ATNA: %s unreachable (%s); audit messages stay in the spool",
                                    self.dest, exc)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            records = self.reader.read(*pos, max_records=BATCH)
            now = time.monotonic()
            try:
                if records:
                    if udp:
                        for r in records:
                            msg = syslog_message(r.payload, self.origin, r.seq)
                            if len(msg) > UDP_MAX:
                                log.error("ATNA: audit message %s (%d bytes) too large for UDP to %s; "
                                          "skipped", r.seq, len(msg), self.dest)
                                continue
                            conn.send(msg)
                    else:
                        if not self._alive(conn):
                            raise ConnectionError("peer closed the connection")
                        conn.sendall(b"".join(octet_frame(syslog_message(r.payload, self.origin, r.seq))
                                              for r in records))
                    self.sent += len(records)
                    backoff = 0.2   # delivered: the next failure waits briefly again
                    last = records[-1]
                    pos = (last.next_segment, last.next_offset)
                    if udp:
                        acked = pos
                        self._ack(acked)
                    else:
                        inflight.append((pos, now))
                if not udp and inflight and now - inflight[0][1] >= CONFIRM_SECONDS:
                    if not self._alive(conn):
                        raise ConnectionError("peer closed the connection")
                    confirmed = None
                    while inflight and now - inflight[0][1] >= CONFIRM_SECONDS:
                        confirmed = inflight.popleft()[0]
                    if confirmed is not None:
                        acked = confirmed
                        self._ack(acked)
                elif self._acked != self._written:
                    self._ack(self._acked)  # a throttled position, once ACK_EVERY has passed
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                log.warning("ATNA: sending to %s failed (%s); will re-send from the last "
                            "acknowledged message", self.dest, exc)
                try:
                    conn.close()
                except OSError:
                    pass
                conn = None
                pos = acked
                inflight.clear()
                down_since = time.monotonic()
                # a UDP "connection" always succeeds, and a TLS peer may accept then drop
                # us: without this wait a refused destination is retried in a tight loop
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not records:
                self.stop.wait(IDLE_POLL)
            elif len(records) < BATCH:
                self.stop.wait(LINGER)
        if conn is not None:
            conn.close()


def run_senders(spool: Path, destinations: list[Destination], ssl_context: ssl.SSLContext | None,
                stop: threading.Event) -> None:
    """Run one sender per destination until ``stop``; collect acknowledged segments."""
    threads = [DestinationSender(spool, d, ssl_context, stop) for d in destinations]
    for t in threads:
        t.start()
        log.info("ATNA: delivering audit messages to %s", t.dest)
    stats = spool.parent / "sender-stats.json"
    last = None
    for tick in itertools.count(1):
        current = {"pid": os.getpid(), "sent": {str(t.dest): t.sent for t in threads}}
        if current != last:  # for operators and benchmarks/atna.py
            tmp = stats.with_suffix(".tmp")
            tmp.write_text(json.dumps(current))
            os.replace(tmp, stats)
            last = current
        if tick % 5 == 0:
            collect_garbage(spool, [t.reader for t in threads])
        if stop.wait(2):
            break
    for t in threads:
        t.join(5)
