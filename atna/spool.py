"""A durable local spool of outgoing audit messages: append-only, fsync'd, in order,
acknowledged per destination by position.

Layout (``$OPENDMP_HOME/atna/spool/``)::

    origin                      this spool's identity (a UUID), sent with every message
    lock                        flock'd by writers (gunicorn workers, threads) while appending
    000000000001.seg ...        segments of records: u32 length | u32 crc32 | payload
    ack-<destination>           "segment offset" of the first record not yet delivered

A position is ``(segment, offset)``; as one integer (``segment << 32 | offset``) it is the
message's sequence number, unique for the origin, which receivers use to drop a re-sent
message. Every writing process starts a new segment the first time it appends, so a record
torn by a crash can only be the last one of a segment: the reader skips to the next
segment when it meets one (that message's transaction never returned). Segments behind
every destination's acknowledgement are deleted.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import uuid
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("opendmp.atna.spool")

HEADER = struct.Struct(">II")
SEGMENT_MAX = 64 * 1024 * 1024
MAX_RECORD = 16 * 1024 * 1024


def seq_of(segment: int, offset: int) -> int:
    return (segment << 32) | offset


def _seg_name(n: int) -> str:
    return f"{n:012d}.seg"


def _segments(directory: Path) -> list[int]:
    return sorted(int(p.name[:-4]) for p in directory.glob("*.seg") if p.name[:-4].isdigit())


def after_fork_in_child(obj, method) -> None:
    """Call ``method(obj)`` in every child forked after this (gunicorn forks its workers,
    the ARR its ingest process, ``opendmp serve`` its listeners), as long as ``obj`` lives."""
    ref = weakref.ref(obj)

    def reinit() -> None:
        target = ref()
        if target is not None:
            method(target)
    os.register_at_fork(after_in_child=reinit)


def _newest(directory: Path) -> int:
    existing = _segments(directory)
    return existing[-1] if existing else 0


def spool_dir(home: Path) -> Path:
    return home / "atna" / "spool"


def origin_of(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "origin"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        tmp = directory / f".origin.{os.getpid()}"
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, path)  # first writer wins
        except FileExistsError:
            pass
        tmp.unlink()
        return path.read_text().strip()


class Spool:
    """The writing side (one per process; thread-safe)."""

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.origin = origin_of(directory)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._segment: int | None = None
        self._fd: int | None = None
        self._pid = os.getpid()
        after_fork_in_child(self, Spool._forked)

    def _forked(self) -> None:
        """In a forked child: a new thread lock (the parent's may have been held by another
        thread at the fork, and would stay locked forever here), no inherited descriptors."""
        self._lock = threading.Lock()
        self._lock_fd = self._fd = self._segment = None
        self._pid = os.getpid()

    def _open_lock(self) -> int:
        if self._lock_fd is None or self._pid != os.getpid():
            self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            self._fd, self._segment, self._pid = None, None, os.getpid()
        return self._lock_fd

    def _switch(self, segment: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.directory / _seg_name(segment),
                           os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segment = segment
        if self.fsync:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def append(self, payload: bytes) -> int:
        """Append one record, durably; returns its sequence number."""
        return self.append_many([payload])[0]

    def append_many(self, payloads: list[bytes]) -> list[int]:
        """Append records in order with one write and one fdatasync (group commit)."""
        for payload in payloads:
            if len(payload) > MAX_RECORD:
                raise ValueError(f"audit record of {len(payload)} bytes exceeds {MAX_RECORD}")
        records = [HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads]
        with self._lock:
            lock_fd = self._open_lock()
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                if self._fd is None:  # a process's first append starts a new segment
                    self._switch(_newest(self.directory) + 1)
                else:
                    st = os.fstat(self._fd)
                    # segments are numbered in order of creation and collected oldest
                    # first: a later one exists iff the next one does, unless ours was
                    # collected too (no link left). Only then is the directory listed.
                    if st.st_nlink == 0 or os.path.exists(
                            os.path.join(self.directory, _seg_name(self._segment + 1))):
                        newest = _newest(self.directory)
                        # another process started a later segment: append there (the
                        # reader leaves a segment for good once a later one exists); or
                        # ours was collected (every destination acknowledged past it) and
                        # no later one exists: appending to the unlinked file would lose
                        # records
                        self._switch(newest if newest > self._segment else self._segment + 1)
                offset = os.fstat(self._fd).st_size
                total = sum(len(r) for r in records)
                if offset + total > SEGMENT_MAX and offset > 0:
                    self._switch(self._segment + 1)
                    offset = 0
                seqs = []
                for r in records:
                    seqs.append(seq_of(self._segment, offset))
                    offset += len(r)
                data = b"".join(records)
                written = 0
                while written < len(data):
                    written += os.write(self._fd, data[written:])
                if self.fsync:
                    os.fdatasync(self._fd)
                return seqs
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._lock_fd = None


@dataclass(frozen=True)
class Record:
    segment: int
    offset: int
    #: position just after this record
    next_segment: int
    next_offset: int
    payload: bytes

    @property
    def seq(self) -> int:
        return seq_of(self.segment, self.offset)


class SpoolReader:
    """Reads records in order from a position; positions are acknowledged per destination."""

    def __init__(self, directory: Path, destination: str) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in destination)
        self.ack_path = directory / f"ack-{safe}"

    def acked(self) -> tuple[int, int]:
        try:
            seg, off = self.ack_path.read_text().split()
            return int(seg), int(off)
        except (FileNotFoundError, ValueError):
            segs = _segments(self.directory)
            return (segs[0] if segs else 1), 0

    def ack(self, segment: int, offset: int) -> None:
        tmp = self.ack_path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{segment} {offset}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.ack_path)

    def _read_segment(self, segment: int, offset: int, out: list[Record], limit: int,
                      max_bytes: int) -> tuple[int, bool]:
        """Append to ``out`` the complete records of ``segment`` from ``offset``; returns the
        offset reached and whether a bad (incomplete or corrupt) record stopped the read."""
        try:
            fh = open(self.directory / _seg_name(segment), "rb")
        except FileNotFoundError:
            return offset, False
        total = sum(len(r.payload) for r in out)
        with fh:
            fh.seek(offset)
            while len(out) < limit and total < max_bytes:
                head = fh.read(HEADER.size)
                if not head:
                    return offset, False
                if len(head) < HEADER.size:
                    return offset, True
                length, crc = HEADER.unpack(head)
                if length > MAX_RECORD:
                    return offset, True
                payload = fh.read(length)
                if len(payload) < length or zlib.crc32(payload) != crc:
                    return offset, True
                nxt = offset + HEADER.size + length
                out.append(Record(segment, offset, segment, nxt, payload))
                total += length
                offset = nxt
        return offset, False

    def read(self, segment: int, offset: int, max_records: int = 1000,
             max_bytes: int = 8 * 1024 * 1024) -> list[Record]:
        """Records from (segment, offset) on, in order; empty when there is nothing new."""
        out: list[Record] = []

        def full() -> bool:
            return len(out) >= max_records or sum(len(r.payload) for r in out) >= max_bytes

        while not full():
            offset, bad = self._read_segment(segment, offset, out, max_records, max_bytes)
            if full():
                return out
            later = [s for s in _segments(self.directory) if s > segment]
            if not later:
                return out  # the newest segment: an incomplete record is still being written
            # a later segment exists, so no writer appends here any more: read what is left
            offset, bad = self._read_segment(segment, offset, out, max_records, max_bytes)
            if full():
                return out
            if bad:
                log.error("spool segment %s: torn record at offset %s skipped", segment, offset)
            segment, offset = later[0], 0
        return out

    def pending_segments_before(self, segment: int) -> list[Path]:
        return [self.directory / _seg_name(s) for s in _segments(self.directory) if s < segment]


def collect_garbage(directory: Path, readers: list[SpoolReader]) -> int:
    """Delete segments every destination has acknowledged past; returns how many."""
    if not readers:
        return 0
    oldest = min(r.acked()[0] for r in readers)
    segs = _segments(directory)
    removed = 0
    for s in segs[:-1]:  # never the newest: a writer may be appending to it
        if s < oldest:
            try:
                (directory / _seg_name(s)).unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed
