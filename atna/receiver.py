"""The Audit Record Repository's receivers (ITI TF-2a §3.20): RFC 5425 syslog over mutual
TLS and RFC 5426 syslog over UDP, on one asyncio loop in its own process.

The event loop only frames bytes (:mod:`atna.syslog`) and queues messages; a writer thread
takes everything queued since its last write, parses and validates the audit XML and
stores the batch in one transaction (:mod:`atna.store`). The bounded queue pushes back on
TLS senders (we stop reading); UDP datagrams that find it full are dropped and counted.

Policy for what arrives:

- a frame that cannot be delimited (bad MSG-LEN, over ``OPENDMP_AUDIT_MAX_FRAME``): counted
  as ``malformed``, logged, the connection is closed (octet counting cannot resynchronise);
- a message without an RFC 5424 header: ``malformed``, logged, the connection goes on;
- a payload that is not an XML ``AuditMessage``: ``non_audit``, logged, not stored;
- an ``AuditMessage`` that fails the DICOM schema (RFC 3881 senders, the Swiss EPR samples'
  missing ``UserIsRequestor``): stored with ``valid = 0`` and counted ``schema_invalid`` — an
  audit repository keeps the evidence it can read rather than drop it;
- a TLS client without a certificate from the trust store: the handshake is refused,
  counted as ``tls_refused`` and audited here as a Security Alert (110113 / 110126).

Counters are written every half second to ``$OPENDMP_HOME/atna/arr-stats.json``
(``opendmp audit stats``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from . import events as ev
from .message import NotAnAuditMessage, parse_audit
from .nodeauth import is_refusal
from .pki import subject_of
from .store import Received, store_batch
from .syslog import FramingError, StreamFramer, SyslogError, parse_rfc5424

log = logging.getLogger("opendmp.atna.arr")

ORIGIN_SD = "opendmp@32473"
QUEUE_MAX = 20000
BATCH_MAX = 2000
UDP_RCVBUF = 16 * 1024 * 1024
#: seconds a batch waits for more messages before it is written
BATCH_WINDOW = 0.05
HANDSHAKE_TIMEOUT = 10.0
ALERTS_PER_SECOND = 20


@dataclass
class Incoming:
    msg: bytes
    transport: str
    peer: str | None
    origin: str | None = None
    origin_seq: int | None = None


class _RateLimitedLog:
    def __init__(self, per_minute: int = 30) -> None:
        self.per_minute = per_minute
        self.window = 0
        self.count = 0

    def warning(self, fmt: str, *args) -> None:
        now = int(time.monotonic() // 60)
        if now != self.window:
            self.window, self.count = now, 0
        self.count += 1
        if self.count <= self.per_minute:
            log.warning(fmt, *args)
        elif self.count == self.per_minute + 1:
            log.warning("(more warnings this minute suppressed; see the counters)")


class AuditRecordRepository:
    def __init__(self, engine: Engine, ssl_context: ssl.SSLContext | None, host: str,
                 tls_port: int, udp_port: int, stats_path: Path,
                 max_frame: int = 1024 * 1024, reporter: str = "opendmp-arr",
                 tcp_port: int = 0) -> None:
        self.engine = engine
        self.ssl_context = ssl_context
        self.host = host
        self.tls_port = tls_port
        self.udp_port = udp_port
        #: plain TCP (RFC 6587): off by default, for lab senders without TLS (logger --tcp)
        self.tcp_port = tcp_port
        self.max_frame = max_frame
        self.stats_path = stats_path
        self.reporter = reporter
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._warn = _RateLimitedLog()
        self._alerts_window = (0, 0)
        self.queue: asyncio.Queue[Incoming] | None = None
        #: bound ports (useful when 0 = any was asked)
        self.bound: dict[str, int] = {}

    # ------------------------------------------------------------------ counters
    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counters)

    # ------------------------------------------------------------------ messages
    def _message(self, data: bytes, transport: str, peer: str | None, trusted: bool) -> Incoming | None:
        try:
            sm = parse_rfc5424(data)
        except SyslogError as exc:
            self.count("malformed")
            self._warn.warning("ATNA %s from %s: malformed syslog message (%s): %r",
                               transport, peer, exc, data[:80])
            return None
        origin = seq = None
        if trusted and sm.structured_data and ORIGIN_SD in sm.structured_data:
            params = sm.sd_params.get(ORIGIN_SD, {})
            if params.get("origin") and (params.get("seq") or "").isdigit():
                origin, seq = params["origin"][:64], int(params["seq"])
        self.count("received")
        return Incoming(sm.msg, transport, peer, origin, seq)

    def _process(self, batch: list[Incoming]) -> None:
        """Writer thread: parse, validate and store one batch."""
        received = []
        now = int(time.time() * 1_000_000)
        for item in batch:
            try:
                record = parse_audit(item.msg)
            except NotAnAuditMessage as exc:
                self.count("non_audit")
                self._warn.warning("ATNA %s from %s: not an audit message (%s)", item.transport,
                                   item.peer, exc)
                continue
            if not record.valid:
                self.count("schema_invalid")
            received.append(Received(record, item.transport, item.peer, item.origin,
                                     item.origin_seq, now))
        delay = 0.5
        while True:
            try:
                stored = store_batch(self.engine, received)
                break
            except Exception:  # noqa: BLE001 - the database may be restarting: keep the batch
                log.exception("ATNA: storing %d audit records failed; retrying", len(received))
                time.sleep(delay)
                delay = min(delay * 2, 10)
        self.count("stored", stored)
        if len(received) > stored:
            self.count("duplicates", len(received) - stored)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            # group commit: gather what arrives within BATCH_WINDOW (one transaction, not
            # one per message, when messages trickle in one by one)
            deadline = loop.time() + BATCH_WINDOW
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                    except asyncio.TimeoutError:
                        break
            await loop.run_in_executor(None, self._process, batch)

    # ------------------------------------------------------------------ TLS (RFC 5425)
    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._stream(reader, writer, tls=False)

    async def _on_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._stream(reader, writer, tls=True)

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      tls: bool) -> None:
        peername = writer.get_extra_info("peername")
        address = peername[0] if peername else None
        subject = None
        if tls:
            try:
                await writer.start_tls(self.ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
                self.count("tls_refused")
                reason = getattr(exc, "reason", None) or type(exc).__name__
                log.warning("ATNA TLS: handshake with %s refused: %s", address, reason)
                if is_refusal(exc):  # not a peer gone before its handshake ended
                    self._security_alert(address, f"syslog-tls: TLS handshake refused: {reason}")
                writer.transport.abort()
                return
            subject = subject_of(writer.get_extra_info("peercert"))
        transport = "tls" if tls else "tcp"
        self.count(f"{transport}_connections")
        framer = StreamFramer(self.max_frame)
        assert self.queue is not None
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                for event in framer.feed(data):
                    if isinstance(event, FramingError):
                        self.count("malformed")
                        self._warn.warning("ATNA %s from %s (%s): %s; closing", transport, address,
                                           subject, event.reason)
                        continue
                    item = self._message(event.data, transport, subject or address, trusted=tls)
                    if item is not None:
                        await self.queue.put(item)
                if framer.closed:
                    break
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("ATNA %s connection from %s ended: %s", transport, address, exc)
        finally:
            writer.transport.abort() if framer.closed else writer.close()

    def _security_alert(self, address: str | None, description: str) -> None:
        second = int(time.monotonic())
        window, n = self._alerts_window
        n = n + 1 if window == second else 1
        self._alerts_window = (second, n)
        if n > ALERTS_PER_SECOND:
            self.count("alerts_suppressed")
            return
        xml = ev.build(ev.security_alert(ev.NODE_AUTHENTICATION, self.reporter, description,
                                         address))
        assert self.queue is not None
        try:
            self.queue.put_nowait(Incoming(xml, "local", address))
        except asyncio.QueueFull:
            self.count("dropped")

    # ------------------------------------------------------------------ UDP (RFC 5426)
    class _Udp(asyncio.DatagramProtocol):
        def __init__(self, arr: "AuditRecordRepository") -> None:
            self.arr = arr

        def datagram_received(self, data: bytes, addr) -> None:
            arr = self.arr
            item = arr._message(data.rstrip(b"\r\n\x00"), "udp", addr[0] if addr else None,
                                trusted=False)
            if item is None:
                return
            try:
                arr.queue.put_nowait(item)
            except asyncio.QueueFull:
                arr.count("dropped")

    # ------------------------------------------------------------------ run
    async def _stats_writer(self) -> None:
        last = None
        last_log = 0.0
        while True:
            await asyncio.sleep(0.5)
            current = {**self.stats(), "ports": self.bound, "pid": os.getpid()}
            if current != last:
                tmp = self.stats_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(current))
                os.replace(tmp, self.stats_path)
                last = current
                if time.monotonic() - last_log > 10:
                    log.info("ATNA counters: %s", {k: v for k, v in current.items() if k not in ("ports", "pid")})
                    last_log = time.monotonic()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        self.queue = asyncio.Queue(QUEUE_MAX)
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._stats_writer())]
        servers = []
        if self.tls_port and self.ssl_context is not None:
            server = await asyncio.start_server(self._on_tls, self.host, self.tls_port,
                                                reuse_address=True)
            self.bound["tls"] = server.sockets[0].getsockname()[1]
            servers.append(server)
            log.info("ATNA ARR: syslog over TLS (RFC 5425, mutual TLS) on %s:%s", self.host,
                     self.bound["tls"])
        if self.tcp_port:
            server = await asyncio.start_server(self._on_tcp, self.host, self.tcp_port,
                                                reuse_address=True)
            self.bound["tcp"] = server.sockets[0].getsockname()[1]
            servers.append(server)
            log.warning("ATNA ARR: syslog over plain TCP (RFC 6587, no authentication) on %s:%s",
                        self.host, self.bound["tcp"])
        if self.udp_port:
            transport, _ = await loop.create_datagram_endpoint(lambda: self._Udp(self),
                                                               local_addr=(self.host, self.udp_port))
            sock = transport.get_extra_info("socket")
            try:  # absorb bursts while the loop is busy (capped by net.core.rmem_max)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass
            self.bound["udp"] = transport.get_extra_info("sockname")[1]
            log.info("ATNA ARR: syslog over UDP (RFC 5426) on %s:%s", self.host, self.bound["udp"])
        if ready is not None:
            ready.set()
        try:
            await asyncio.gather(*tasks)
        finally:
            for s in servers:
                s.close()
