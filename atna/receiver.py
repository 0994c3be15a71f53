"""The Audit Record Repository's receivers (ITI TF-2a §3.20): RFC 5425 syslog over mutual
TLS and RFC 5426 syslog over UDP, on one asyncio loop in its own process.

The event loop (this process) decrypts TLS, frames the bytes and reads the RFC 5424 header
(:mod:`atna.syslog`); batches of audit messages go to a separate ingest process
(:mod:`atna.pipeline`, :mod:`atna.ingest`) that parses, validates, indexes and stores each
batch in one transaction (:mod:`atna.store`), on the other CPU. The hand-over is bounded:
when it is full the receiver stops reading TLS connections (TCP pushes back on the sender)
and drops UDP datagrams, counted as ``dropped``. A message is durable once its batch is
committed (see :mod:`atna.pipeline` for what a crash can lose).

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

Counters are written (when they changed) every 0.2 s to ``$OPENDMP_HOME/atna/arr-stats.json``
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
from pathlib import Path

from . import events as ev
from .nodeauth import is_refusal
from .pki import subject_of
from .pipeline import IngestPipeline
from .ratelimit import RateLimitedLog
from .syslog import FramingError, StreamFramer, SyslogError, parse_rfc5424

log = logging.getLogger("opendmp.atna.arr")

ORIGIN_SD = "opendmp@32473"
UDP_RCVBUF = 16 * 1024 * 1024
#: seconds between writes of the counters file (only written when a counter changed)
STATS_INTERVAL = 0.2
HANDSHAKE_TIMEOUT = 10.0
ALERTS_PER_SECOND = 20


class AuditRecordRepository:
    def __init__(self, database_url: str, ssl_context: ssl.SSLContext | None, host: str,
                 tls_port: int, udp_port: int, stats_path: Path,
                 max_frame: int = 1024 * 1024, reporter: str = "opendmp-arr",
                 tcp_port: int = 0) -> None:
        self.database_url = database_url
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
        self._warn = RateLimitedLog(log)
        self._alerts_window = (0, 0)
        self.pipeline: IngestPipeline | None = None
        #: bound ports (useful when 0 = any was asked)
        self.bound: dict[str, int] = {}
        self._servers: list = []

    # ------------------------------------------------------------------ counters
    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counters)

    # ------------------------------------------------------------------ messages
    def _add_counters(self, counters: dict) -> None:
        with self._lock:
            self.counters.update(counters)

    def _message(self, data: bytes, transport: str, peer: str | None, trusted: bool) -> tuple | None:
        """The pipeline item of one syslog message: (transport, peer, origin, seq, xml)."""
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
        return (transport, peer, origin, seq, sm.msg)

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
        pipeline = self.pipeline
        assert pipeline is not None
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
                        await pipeline.put(item)
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
        assert self.pipeline is not None
        if not self.pipeline.offer(("local", address, None, None, xml)):
            self.count("dropped")

    # ------------------------------------------------------------------ UDP (RFC 5426)
    class _Udp(asyncio.DatagramProtocol):
        def __init__(self, arr: "AuditRecordRepository") -> None:
            self.arr = arr

        def datagram_received(self, data: bytes, addr) -> None:
            arr = self.arr
            item = arr._message(data.rstrip(b"\r\n\x00"), "udp", addr[0] if addr else None,
                                trusted=False)
            if item is not None and not arr.pipeline.offer(item):
                arr.count("dropped")

    # ------------------------------------------------------------------ run
    def _write_stats(self) -> dict:
        current = {**self.stats(), "ports": self.bound, "pid": os.getpid(),
                   "ingest_pid": self.pipeline.worker_pid if self.pipeline else None}
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current))
        os.replace(tmp, self.stats_path)
        return current

    async def _stats_writer(self) -> None:
        last = None
        last_log = 0.0
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            now = (self.stats(), self.pipeline.worker_pid if self.pipeline else None)
            if now != last:
                last = now
                current = self._write_stats()
                if time.monotonic() - last_log > 10:
                    log.info("ATNA counters: %s", {k: v for k, v in current.items()
                                                   if k not in ("ports", "pid", "ingest_pid")})
                    last_log = time.monotonic()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Listen until cancelled; then call :meth:`stop` to store what was received."""
        self.pipeline = IngestPipeline(self.database_url, self._add_counters)
        await self.pipeline.start()
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        if self.tls_port and self.ssl_context is not None:
            server = await asyncio.start_server(self._on_tls, self.host, self.tls_port,
                                                reuse_address=True)
            self.bound["tls"] = server.sockets[0].getsockname()[1]
            self._servers.append(server)
            log.info("ATNA ARR: syslog over TLS (RFC 5425, mutual TLS) on %s:%s", self.host,
                     self.bound["tls"])
        if self.tcp_port:
            server = await asyncio.start_server(self._on_tcp, self.host, self.tcp_port,
                                                reuse_address=True)
            self.bound["tcp"] = server.sockets[0].getsockname()[1]
            self._servers.append(server)
            log.warning("ATNA ARR: syslog over plain TCP (RFC 6587, no authentication) on %s:%s",
                        self.host, self.bound["tcp"])
        if self.udp_port:
            transport, _ = await loop.create_datagram_endpoint(lambda: self._Udp(self),
                                                               local_addr=(self.host, self.udp_port))
            self._servers.append(transport)
            sock = transport.get_extra_info("socket")
            try:  # absorb bursts while the loop is busy (capped by net.core.rmem_max)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass
            self.bound["udp"] = transport.get_extra_info("sockname")[1]
            log.info("ATNA ARR: syslog over UDP (RFC 5426) on %s:%s", self.host, self.bound["udp"])
        self._write_stats()  # ports and pids, before the first message
        if ready is not None:
            ready.set()
        await self._stats_writer()

    async def stop(self, timeout: float = 20.0) -> None:
        """Stop listening, store every message already received (at most ``timeout``
        seconds), stop the ingest process and write the final counters."""
        for server in self._servers:
            server.close()
        if self.pipeline is not None:
            await self.pipeline.drain(timeout)
        self._write_stats()
