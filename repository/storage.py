"""The repository's document store: where document bytes live, encrypted at rest.

:class:`DocumentStore` is the interface the actors use; :class:`FileSystemStore`, under
``<home>/documents``, is the one implementation today. An S3-compatible store would
implement the same protocol (staging as a multipart upload or a ``staging/`` prefix,
commit as a copy to the final name) with the same sealing (:mod:`repository.crypto`),
and :func:`open_store` would pick it; the actors would not change.

Writing a document (ITI-41)::

    with store.begin() as w:                  # a temporary file inside the store
        for part in body:                     # encrypted as it arrives, in bounded memory
            w.write(part)
        staged = w.finish()                   # durable; key, size, sha1_hex, key_id
    ... record the key and register the metadata (index row + ITI-42, committed) ...
    # or: staged, durable = w.finish_in_background(), and durable.result() before
    # the commit that records it
    store.commit(staged)                      # atomic rename into place (not fsync'd)
    # or, when registration failed: store.discard(staged)

Reading (ITI-43)::

    with store.open(key) as doc:              # header checked, file length checked
        doc.size, doc.sha1_hex                # known before any byte is sent
        for chunk in verify_sha1(doc, registry_hash):  # each chunk authenticated first
            send(chunk)

``doc.sha1_hex`` was sealed at write time, so comparing it with the registry's hash
before sending anything catches a mismatched document up front; :func:`verify_sha1`
re-hashes the bytes on the way and holds the last chunk back until they match.

After a crash, :meth:`~DocumentStore.iter_staged` lists documents that were finished but
neither committed nor discarded (the actor commits those the registry knows and discards
the others) and :meth:`~DocumentStore.sweep_partial` removes half-written ones.

Layout of a :class:`FileSystemStore` (files 0600, directories 0700)::

    staging/<key>.partial    being written; removed on any write error
    staging/<key>.staged     sealed, waiting for commit or discard (durable before any
                             row names it: the writer's fsync comes first)
    objects/ab/cd/<key>      committed documents; key = 32 random hex digits "abcd..."

Errors are :class:`StoreError` subclasses: :class:`StoreCorruption` (and its
:class:`MissingKey`) when a document does not verify, :class:`DocumentNotFound`,
:class:`StoreReadError`, :class:`StoreWriteError`, ``keys.KeyConfigError``.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Protocol, runtime_checkable

from .crypto import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    REWRAP_SPAN,
    Decryptor,
    Encryptor,
    Header,
    MissingKey,
    StoreCorruption,
    StoreError,
    StoreWriteError,
    rewrap_header,
    verify_sha1,
)
from .keys import Keyring, load_keyring

log = logging.getLogger("opendmp.repository")

__all__ = [
    "DocumentStore", "PendingWrite", "DocumentReader", "StagedDocument", "RewrapResult",
    "FileSystemStore", "open_store", "verify_sha1", "StoreError", "StoreCorruption",
    "MissingKey", "StoreWriteError", "StoreReadError", "DocumentNotFound",
]

KEY_RE = re.compile(r"[0-9a-f]{32}\Z")
STORE_DIR = "documents"


class DocumentNotFound(StoreError, LookupError):
    """No committed document has this key."""


class StoreReadError(StoreError):
    """An I/O error while reading a document."""


@dataclass(frozen=True)
class StagedDocument:
    """A finished, durable, not yet committed document."""

    key: str
    size: int
    sha1_hex: str
    key_id: str


@dataclass(frozen=True)
class RewrapResult:
    rewrapped: int
    already_current: int
    #: key -> reason, for documents that could not be re-wrapped (left as they were).
    failed: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- interface


class PendingWrite(Protocol):
    """A document being written. A context manager: leaving it unfinished (or on an
    exception) aborts, leaving nothing behind."""

    key: str

    @property
    def size(self) -> int: ...               # plaintext bytes written so far
    def write(self, data: bytes) -> None: ...
    def finish(self) -> StagedDocument: ...
    def finish_in_background(self) -> tuple[StagedDocument, Future]: ...
    def abort(self) -> None: ...
    def __enter__(self) -> "PendingWrite": ...
    def __exit__(self, *exc: object) -> None: ...


class DocumentReader(Protocol):
    """An open document: an iterable of verified plaintext chunks, read once. Also a WSGI
    response body (``close()`` is called by the server)."""

    key: str
    size: int                                  # plaintext size, for Content-Length
    sha1_hex: str                              # sealed at write time
    key_id: str

    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "DocumentReader": ...
    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class DocumentStore(Protocol):
    def begin(self) -> PendingWrite: ...
    def commit(self, staged: StagedDocument | str) -> None: ...
    def discard(self, staged: StagedDocument | str) -> bool: ...
    def open(self, key: str, include_staged: bool = False) -> DocumentReader: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def iter_keys(self) -> Iterator[str]: ...
    def iter_staged(self) -> Iterator[str]: ...
    def staged_info(self, key: str) -> StagedDocument: ...
    def staged_mtime(self, key: str) -> float: ...
    def sweep_partial(self, older_than: float = 3600.0) -> int: ...
    def rewrap(self, old_keyring: Keyring, new_keyring: Keyring | None = None) -> RewrapResult: ...
    def key_usage(self) -> collections.Counter[str]: ...


def open_store(settings_env: Mapping[str, str], home: Path,
               keyring: Keyring | None = None) -> DocumentStore:
    """The configured document store (today: the file system under ``<home>/documents``)."""
    home = Path(home)
    return FileSystemStore(home / STORE_DIR, keyring or load_keyring(settings_env, home))


# ---------------------------------------------------------------------------- file I/O
# Module-level so that tests can make them fail (disk full, I/O error).


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) < size:                     # regular files return short reads only at EOF
        parts = [data]
        got = len(data)
        while got < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(path: Path) -> None:
    """Create ``path`` and its missing parents (0700), each made durable in its parent."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        _fsync_dir(directory.parent)


def _precreate_fanout(objects: Path) -> None:
    """Create the first level of the ``objects/ab/cd`` fan-out (256 directories, once per
    store). The 65,536 leaf directories are not made in advance (4 KiB each on ext4: 256 MiB
    for an empty store); :meth:`FileSystemStore.commit` makes each on first use."""
    if (objects / "ff").is_dir():
        return
    made = False
    for i in range(256):
        try:
            os.mkdir(objects / f"{i:02x}", 0o700)
            made = True
        except FileExistsError:
            pass
    if made:
        _fsync_dir(objects)


def _make_leaf(directory: Path) -> None:
    """Create a fan-out directory (and its parent, in a store older than the pre-created
    first level). Not fsync'd: see :meth:`FileSystemStore.commit`."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory.parent, 0o700)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)


def _key_of(staged: StagedDocument | str) -> str:
    key = staged.key if isinstance(staged, StagedDocument) else staged
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValueError(f"not a document store key: {key!r}")
    return key


def _open_sealed(fd: int, keyring: Keyring, key: str) -> tuple[Header, Decryptor]:
    """Parse, unwrap and authenticate the header of an open document file."""
    for attempt in range(2):
        raw = os.pread(fd, HEADER_SIZE, 0)
        try:
            header = Header.parse(raw)
            return header, Decryptor(header, keyring.get(header.key_id).key, key)
        except StoreCorruption:
            # A re-wrap rewriting this header as we read it shows a torn header: retry once.
            if attempt:
                raise
            time.sleep(0.005)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- the store


class FileSystemStore:
    """:class:`DocumentStore` on a local (or shared POSIX) file system."""

    def __init__(self, root: Path, keyring: Keyring, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.keyring = keyring
        self.chunk_size = chunk_size
        self._staging = self.root / "staging"
        self._objects = self.root / "objects"
        self._objects_dir = str(self._objects)
        _mkdirs(self._staging)
        _mkdirs(self._objects)
        _precreate_fanout(self._objects)
        #: kept open for the fsync that makes each new staged name durable
        self._staging_fd = os.open(self._staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __del__(self) -> None:
        fd, self._staging_fd = getattr(self, "_staging_fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"FileSystemStore({str(self.root)!r})"

    # paths
    def _object_path(self, key: str) -> Path:
        return self._objects / key[:2] / key[2:4] / key

    def staged_mtime(self, key: str) -> float:
        """When a staged document was finished (seconds since the epoch), for sweeps."""
        return self._staged_path(key).stat().st_mtime

    def _staged_path(self, key: str) -> Path:
        return self._staging / f"{key}.staged"

    def _partial_path(self, key: str) -> Path:
        return self._staging / f"{key}.partial"

    # writing
    def begin(self) -> "_FilePendingWrite":
        return _FilePendingWrite(self, os.urandom(16).hex())

    def commit(self, staged: StagedDocument | str) -> None:
        """Move a staged document into place (atomic rename). Idempotent.

        The rename is not fsync'd: the staged file already is, and the caller has recorded
        the document (index row) before committing it, so until the rename reaches the disk
        :meth:`open` finds the document under ``staging/`` and the recovery sweep finishes
        the move after a crash. The leaf directory of the fan-out is made on first use.
        """
        key = _key_of(staged)
        source, target = self._staged_path(key), self._object_path(key)
        try:
            try:
                os.rename(source, target)
            except FileNotFoundError:
                if not os.path.exists(source):
                    raise
                _make_leaf(target.parent)
                os.rename(source, target)
        except FileNotFoundError:
            if target.exists():
                return
            raise DocumentNotFound(f"no staged document {key}") from None
        except OSError as exc:
            raise StoreWriteError(f"could not commit document {key}: {exc.strerror or exc}") from exc

    def discard(self, staged: StagedDocument | str) -> bool:
        """Remove a staged (uncommitted) document; False if there was none."""
        key = _key_of(staged)
        try:
            os.unlink(self._staged_path(key))
        except FileNotFoundError:
            return False
        _fsync_dir(self._staging)
        return True

    # reading
    def open(self, key: str, include_staged: bool = False) -> "_FileReader":
        """A committed document. With ``include_staged`` also one still under ``staging/``:
        for a caller whose index already records it as committed (ITI-43), in the window
        before :meth:`commit` renames it or before the recovery sweep does after a crash."""
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise DocumentNotFound(f"no document {key!r}")
        # the path as a str: pathlib's joins cost more than the open on this hot path (ITI-43)
        path = os.path.join(self._objects_dir, key[:2], key[2:4], key)
        if not include_staged:
            return _FileReader(self, key, path)
        try:
            return _FileReader(self, key, path)
        except DocumentNotFound:
            pass
        for candidate in (self._staged_path(key), path):  # renamed meanwhile: retry
            try:
                return _FileReader(self, key, candidate)
            except DocumentNotFound:
                continue
        raise DocumentNotFound(f"no document {key}")

    def exists(self, key: str) -> bool:
        return isinstance(key, str) and bool(KEY_RE.match(key)) and self._object_path(key).is_file()

    def delete(self, key: str) -> bool:
        """Remove a committed document; False if there was none."""
        if not self.exists(key):
            return False
        path = self._object_path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    # listing, recovery
    def iter_keys(self) -> Iterator[str]:
        """Keys of the committed documents (no order)."""
        for top in _scandir(self._objects):
            for sub in _scandir(Path(top.path)):
                for entry in _scandir(Path(sub.path)):
                    if KEY_RE.match(entry.name) and entry.name.startswith(top.name + sub.name):
                        yield entry.name

    def iter_staged(self) -> Iterator[str]:
        """Keys of finished documents neither committed nor discarded (left by a crash)."""
        for entry in _scandir(self._staging):
            key, dot, suffix = entry.name.partition(".")
            if suffix == "staged" and KEY_RE.match(key):
                yield key

    def staged_info(self, key: str) -> StagedDocument:
        """Size, SHA-1 and key id of a staged document, from its authenticated header."""
        key = _key_of(key)
        try:
            fd = os.open(self._staged_path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DocumentNotFound(f"no staged document {key}") from None
        try:
            header, dec = _open_sealed(fd, self.keyring, key)
        finally:
            os.close(fd)
        return StagedDocument(key, header.plaintext_size, dec.sha1.hex(), header.key_id)

    def sweep_partial(self, older_than: float = 3600.0) -> int:
        """Remove half-written documents not touched for ``older_than`` seconds (a writer
        that crashed); returns how many. Live writers' files are younger."""
        limit, removed = time.time() - older_than, 0
        for entry in _scandir(self._staging):
            if entry.name.endswith(".partial"):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime <= limit:
                        os.unlink(entry.path)
                        removed += 1
        if removed:
            _fsync_dir(self._staging)
        return removed

    # key rotation
    def _sealed_files(self) -> Iterator[tuple[str, Path]]:
        for key in self.iter_staged():
            yield key, self._staged_path(key)
        for key in self.iter_keys():
            yield key, self._object_path(key)

    def rewrap(self, old_keyring: Keyring, new_keyring: Keyring | None = None) -> RewrapResult:
        """Re-wrap the data key of every committed and staged document under the current
        key of ``new_keyring`` (default: ``old_keyring``), unwrapping with ``old_keyring``.

        Only header bytes 32..105 are rewritten, in place, then fsync'd; the sealed body is
        untouched. Documents being written are not included: restart the writers on the
        new key first (see ``repository.keys``). Failures are reported, not raised.
        """
        new_keyring = new_keyring or old_keyring
        target = new_keyring.current
        rewrapped = already = 0
        failed: dict[str, str] = {}
        start, end = REWRAP_SPAN
        for key, path in self._sealed_files():
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue                    # deleted, or committed: seen under objects/
            try:
                raw = os.pread(fd, HEADER_SIZE, 0)
                header = Header.parse(raw)
                if header.key_id == target.key_id:
                    already += 1
                    continue
                try:
                    old = old_keyring.get(header.key_id)
                except MissingKey:
                    old = new_keyring.get(header.key_id)
                new = rewrap_header(header, old.key, target.key_id, target.key)
                Decryptor(new, target.key, key)          # the new header authenticates
                packed = new.pack()
                assert packed[:start] == raw[:start] and packed[end:] == raw[end:]
                _pwrite_all(fd, packed[start:end], start)
                _fsync(fd)
                rewrapped += 1
            except StoreCorruption as exc:
                failed[key] = str(exc)
            except OSError as exc:
                failed[key] = f"I/O error: {exc.strerror or exc}"
            finally:
                os.close(fd)
        return RewrapResult(rewrapped, already, failed)

    def key_usage(self) -> collections.Counter[str]:
        """How many committed and staged documents each master key id wraps (headers
        that do not parse count under ``"<unreadable>"``)."""
        usage: collections.Counter[str] = collections.Counter()
        for _key, path in self._sealed_files():
            try:
                with open(path, "rb") as f:
                    usage[Header.parse(f.read(HEADER_SIZE)).key_id] += 1
            except FileNotFoundError:
                continue
            except (OSError, StoreCorruption):
                usage["<unreadable>"] += 1
        return usage


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------- writer

_FLUSHER: ThreadPoolExecutor | None = None
_FLUSHER_LOCK = threading.Lock()


def _flusher() -> ThreadPoolExecutor:
    """The threads that make sealed documents durable (fsync releases the GIL), made on
    first use in each process (a forked worker starts without its parent's)."""
    global _FLUSHER
    if _FLUSHER is None:
        with _FLUSHER_LOCK:
            if _FLUSHER is None:
                _FLUSHER = ThreadPoolExecutor(max_workers=4,
                                              thread_name_prefix="opendmp-store-fsync")
    return _FLUSHER


def _forget_flusher() -> None:
    global _FLUSHER, _FLUSHER_LOCK
    _FLUSHER, _FLUSHER_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_flusher)



class _FilePendingWrite:
    def __init__(self, store: FileSystemStore, key: str) -> None:
        self.key = key
        self._store = store
        self._partial = store._partial_path(key)
        self._fd: int | None = None
        self._done = False
        self._sealed = False
        master = store.keyring.current
        self._enc = Encryptor(master.key_id, master.key, key, store.chunk_size)
        try:
            self._fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                               | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            _write_all(self._fd, self._enc.header())
        except OSError as exc:
            self._fail(exc)

    @property
    def size(self) -> int:
        return self._enc.size

    def _check_open(self) -> int:
        if self._done or self._fd is None:
            raise ValueError("document writer is finished, aborted or failed")
        return self._fd

    def write(self, data) -> None:
        fd = self._check_open()
        try:
            for sealed in self._enc.update(data):
                _write_all(fd, sealed)
        except (OSError, StoreWriteError) as exc:
            self._fail(exc)

    def finish(self) -> StagedDocument:
        """Seal the last chunk, write the final header, and make the file durable as a
        staged document."""
        staged = self._seal()
        self._persist()
        return staged

    def finish_in_background(self) -> tuple[StagedDocument, Future]:
        """Seal now; make the file durable as a staged document (fsync of the file and of
        the staging directory) on a background thread, so that the caller's database
        work overlaps the disk flushes. The caller must wait for the future (its
        ``result()`` raises :class:`StoreWriteError`; on failure nothing is left) before
        it commits anything that names the document, and before it discards it."""
        staged = self._seal()
        return staged, _flusher().submit(self._persist)

    def _seal(self) -> StagedDocument:
        """Write the last chunk and the final header, and give the file its staged name
        (``.partial`` -> ``.staged``: sealed, not yet durable). The rename happens here, in
        the caller's thread, so that the background thread only waits on the disk: each
        system call of a Python thread hands the GIL over and back, which costs more than
        the call when the caller's thread is busy (benchmarks/README.md)."""
        fd = self._check_open()
        staged_path = self._store._staged_path(self.key)
        try:
            _write_all(fd, self._enc.finalize())
            _pwrite_all(fd, self._enc.header(), 0)
            os.rename(self._partial, staged_path)
        except (OSError, StoreWriteError) as exc:
            self._fail(exc, staged_path)
        self._sealed = True      # from here on, _persist finishes or cleans up
        return StagedDocument(self.key, self._enc.size, self._enc.sha1.hex(), self._enc.key_id)

    def _persist(self) -> None:
        """fsync the file, then the staging directory (its new name)."""
        fd = self._check_open()
        try:
            _fsync(fd)
            _fsync(self._store._staging_fd)
        except (OSError, StoreWriteError) as exc:
            self._fail(exc, self._store._staged_path(self.key))
        finally:
            if self._fd is not None:
                self._fd = None
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._done = True

    def abort(self) -> None:
        """Drop the document being written (no-op once finished, or once sealed: then
        its persisting owns the file)."""
        if self._done or self._sealed:
            return
        self._done = True
        self._cleanup()

    def _cleanup(self, *extra: Path) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        for path in (self._partial, *extra):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _fail(self, exc: Exception, *extra: Path) -> None:
        self._done = True
        self._cleanup(*extra)
        if isinstance(exc, StoreWriteError):
            raise exc
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason += " (no room left for the document)"
        raise StoreWriteError(f"could not store document {self.key}: {reason}") from exc

    def __enter__(self) -> "_FilePendingWrite":
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):
                self.abort()


# ---------------------------------------------------------------------------- reader


class _FileReader:
    def __init__(self, store: FileSystemStore, key: str, path: Path) -> None:
        self.key = key
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DocumentNotFound(f"no document {key}") from None
        except OSError as exc:
            raise StoreReadError(f"cannot open document {key}: {exc.strerror or exc}") from exc
        try:
            header, self._dec = _open_sealed(self._fd, store.keyring, key)
            actual = os.fstat(self._fd).st_size
            if actual != header.file_size:
                raise StoreCorruption(f"document {key} is {actual} bytes, its header says "
                                      f"{header.file_size}: truncated or extended")
        except MissingKey as exc:
            self.close()
            raise MissingKey(exc.key_id, f"document {key}: {exc}") from None
        except StoreCorruption as exc:
            self.close()
            raise StoreCorruption(f"document {key}: {exc}") from None
        except OSError as exc:
            self.close()
            raise StoreReadError(f"cannot read document {key}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise
        self.size = header.plaintext_size
        self.key_id = header.key_id
        self.sha1_hex = self._dec.sha1.hex()
        self._started = False

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise ValueError("a document reader is iterated once")
        self._started = True
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        try:
            offset = HEADER_SIZE
            for index, length in enumerate(self._dec.sealed_lengths()):
                if self._fd is None:
                    raise ValueError("document reader is closed")
                try:
                    sealed = _pread_exact(self._fd, length, offset)
                except OSError as exc:
                    raise StoreReadError(f"cannot read document {self.key}: "
                                         f"{exc.strerror or exc}") from exc
                offset += length
                if len(sealed) != length:
                    raise StoreCorruption(f"document {self.key} is truncated")
                try:
                    plain = self._dec.open_chunk(index, sealed)
                except StoreCorruption as exc:
                    raise StoreCorruption(f"document {self.key}: {exc}") from None
                del sealed
                yield plain
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "_FileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
