"""Emitting audit messages: an :class:`Auditor` turns an :class:`~atna.events.AuditDataset`
into XML and appends it to the durable spool; the sender process (:mod:`atna.sender`)
delivers the spool to the configured Audit Record Repositories.

Configuration (environment):

``OPENDMP_AUDIT_REPOSITORIES``  ``self`` (default: our own ARR over mutual TLS), ``none``,
                                or a comma list of ``tls://host:port`` / ``udp://host:port``
``OPENDMP_AUDIT_TLS_PORT``      our ARR's RFC 5425 port (default 6514; ``0`` disables it)
``OPENDMP_AUDIT_UDP_PORT``      our ARR's RFC 5426 port (default 5514; ``0`` disables it)
``OPENDMP_AUDIT_TCP_PORT``      plain TCP syslog (RFC 6587), off (0) by default: lab senders only
``OPENDMP_AUDIT_SOURCE_ID``     AuditSourceID (default ``OpenDMP@<hostname>``)
``OPENDMP_AUDIT_SITE_ID``       AuditEnterpriseSiteID (default none)
``OPENDMP_AUDIT_SYNC``          ``1``: a transaction waits until its audit message is fsync'd
                                (default: group commit by a background thread, see below)
``OPENDMP_AUDIT_GROUP_MS``      how long the background thread gathers audit messages before
                                one fdatasync for all of them (default 10 ms; 0: none)

Durability of an emitted message (default): the transaction answers first; its audit
message is in the spool, fdatasync'd, at most ``OPENDMP_AUDIT_GROUP_MS`` plus one
fdatasync later. A crash of the process in that window loses the audit messages of the
transactions it answered in the window; ``OPENDMP_AUDIT_SYNC=1`` closes it (a transaction
then waits for its own fdatasync, ~0.1-0.3 ms of latency and ~65 µs of CPU each).
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from .events import HOSTNAME, AuditDataset, build
from .spool import Spool, after_fork_in_child, spool_dir

log = logging.getLogger("opendmp.atna")

STAMP = struct.Struct(">q")


@dataclass(frozen=True)
class Destination:
    scheme: str  # tls | udp
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"{self.scheme}-{self.host}-{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class AuditSettings:
    tls_port: int
    udp_port: int
    host: str
    destinations: tuple[Destination, ...]
    source_id: str
    site_id: str | None
    max_frame: int
    #: plain TCP syslog (RFC 6587) for lab senders; 0 (off) by default
    tcp_port: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str], host: str | None = None) -> "AuditSettings":
        tls_port = int(env.get("OPENDMP_AUDIT_TLS_PORT", 6514))
        udp_port = int(env.get("OPENDMP_AUDIT_UDP_PORT", 5514))
        arr_host = env.get("OPENDMP_AUDIT_HOST") or host or env.get("OPENDMP_HOST") or "127.0.0.1"
        spec = (env.get("OPENDMP_AUDIT_REPOSITORIES") or "self").strip()
        dests: list[Destination] = []
        for item in (s.strip() for s in spec.split(",")):
            if not item or item == "none":
                continue
            if item == "self":
                own = "127.0.0.1" if arr_host in ("0.0.0.0", "::", "") else arr_host
                if tls_port:
                    dests.append(Destination("tls", own, tls_port))
                continue
            scheme, _, rest = item.partition("://")
            h, _, p = rest.rpartition(":")
            if scheme not in ("tls", "udp") or not h or not p.isdigit():
                raise ValueError(f"OPENDMP_AUDIT_REPOSITORIES: {item!r} is not tls://host:port "
                                 "or udp://host:port")
            dests.append(Destination(scheme, h.strip("[]"), int(p)))
        return cls(tls_port, udp_port, arr_host, tuple(dests),
                   env.get("OPENDMP_AUDIT_SOURCE_ID") or f"OpenDMP@{HOSTNAME}",
                   env.get("OPENDMP_AUDIT_SITE_ID") or None,
                   int(env.get("OPENDMP_AUDIT_MAX_FRAME", 1024 * 1024)),
                   int(env.get("OPENDMP_AUDIT_TCP_PORT", 0)))


def pack(xml: bytes, when_us: int | None = None) -> bytes:
    """A spool record: emission time (µs, for the syslog TIMESTAMP) + the XML."""
    return STAMP.pack(when_us if when_us is not None else int(time.time() * 1_000_000)) + xml


def unpack(payload: bytes) -> tuple[int, bytes]:
    return STAMP.unpack_from(payload)[0], payload[STAMP.size:]


class Auditor:
    """Thread-safe; one per process. ``emit`` never raises: auditing must not break a
    transaction (failures are logged loudly).

    ``emit(dataset)`` builds and spools synchronously (fdatasync before it returns).
    ``submit(make_dataset)`` is what transactions use: the request thread only hands over
    a function of facts it has already copied; a background thread builds the messages
    and appends them to the spool in groups, one fdatasync per group (group commit),
    within a few milliseconds. ``OPENDMP_AUDIT_SYNC=1`` makes ``submit`` synchronous.
    """

    def __init__(self, settings: AuditSettings, home: Path, sync: bool = False,
                 fsync: bool = True, group_seconds: float = 0.01) -> None:
        self.settings = settings
        #: gather for this long before writing a group (one fdatasync, one wake-up for all)
        self.group_seconds = group_seconds
        self.enabled = bool(settings.destinations)
        self.spool = Spool(spool_dir(home), fsync=fsync) if self.enabled else None
        self.sync = sync
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self._start_lock = threading.Lock()
        after_fork_in_child(self, Auditor._forked)

    def _forked(self) -> None:
        """In a forked child: fresh locks and queue. What the parent had queued stays the
        parent's to write (copying it would spool it twice); a lock another thread of the
        parent held at the fork would never be released here."""
        self._queue = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread = self._thread_pid = None

    def _xml(self, ds: AuditDataset) -> bytes:
        ds.source_id = self.settings.source_id
        ds.source_site = self.settings.site_id
        return build(ds)

    def emit(self, ds: AuditDataset) -> bytes | None:
        if not self.enabled:
            return None
        try:
            xml = self._xml(ds)
            self.spool.append(pack(xml))
            return xml
        except Exception:  # noqa: BLE001
            log.exception("could not spool an audit message (%s)", ds.event_type)
            return None

    def submit(self, make_dataset: Callable[[], AuditDataset | list[AuditDataset]]) -> None:
        """Queue ``make_dataset`` (which may return several datasets, or none)."""
        if not self.enabled:
            return
        if self.sync:
            try:
                made = make_dataset()
                for ds in made if isinstance(made, list) else [made]:
                    self.emit(ds)
            except Exception:  # noqa: BLE001
                log.exception("could not build an audit message")
            return
        self._ensure_thread()
        self._queue.put((int(time.time() * 1_000_000), make_dataset))

    submit_many = submit

    def _ensure_thread(self) -> None:
        if self._thread is not None:  # _forked() clears it in a forked child
            return
        with self._start_lock:
            if self._thread is None or self._thread_pid != os.getpid():  # also after fork
                self._thread = threading.Thread(target=self._run, name="atna-spool", daemon=True)
                self._thread_pid = os.getpid()
                self._thread.start()
                atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]  # idle: blocks until a transaction submits
            while True:
                # busy: wake on the timer only, so that submitting does not wake this
                # thread (no GIL hand-over per transaction), and write each group with
                # one fdatasync
                if self.group_seconds > 0:
                    time.sleep(self.group_seconds)
                while len(batch) < 1000:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not batch:
                    break
                self._write(batch)
                batch = []

    def _write(self, batch: list) -> None:
        payloads, waiters = [], []
        for when_us, item in batch:
            if isinstance(item, threading.Event):
                waiters.append(item)
                continue
            try:
                made = item()
                for ds in made if isinstance(made, list) else [made]:
                    if ds.when is None:  # the event's time, not the spool writer's
                        ds.when = datetime.fromtimestamp(when_us / 1_000_000, timezone.utc)
                    payloads.append(pack(self._xml(ds), when_us))
            except Exception:  # noqa: BLE001
                log.exception("could not build an audit message")
        try:
            if payloads:
                self.spool.append_many(payloads)
        except Exception:  # noqa: BLE001
            log.exception("could not spool %d audit messages", len(payloads))
        for w in waiters:
            w.set()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything submitted so far is in the spool (used at exit, tests)."""
        if self._thread is None or self._thread_pid != os.getpid() or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put((0, done))
        done.wait(timeout)
