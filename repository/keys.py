"""Master keys of the document store: the keyring, where its keys come from, rotation.

A :class:`Keyring` holds master keys by key id. Its *current* key wraps the data key of
every new document; the others only unwrap. Keys come from:

``OPENDMP_MASTER_KEY``
    base64 of 32 bytes, with ``OPENDMP_MASTER_KEY_ID`` (default ``env-`` and 12 hex
    digits of a fingerprint of the key). When set, it is the current key and nothing is
    written to disk: the choice for several machines sharing one store.
``<home>/keys/master-<id>.key``
    one line, base64 of 32 bytes; mode 0600 in a 0700 directory, else refused. Always
    loaded, to unwrap. Without ``OPENDMP_MASTER_KEY`` the current key is the newest key
    file whose id :func:`rotate` generated (a UTC time, ``20250131T142501123456Z``, so
    that ids sort in time order); a key file with any other id (say a former
    ``OPENDMP_MASTER_KEY`` kept to read old documents) never wraps. On the first start
    with neither, such a key file is created.

Rotation, documents staying readable throughout:

1. :func:`rotate` (or: set a new ``OPENDMP_MASTER_KEY``/``_ID`` and keep the old key as
   ``<home>/keys/master-<old id>.key``);
2. restart every process, so that new documents are wrapped by the new key;
3. ``store.rewrap(load_keyring(...))``: rewrites the key id and wrapped key of each
   document header in place; no document is re-encrypted;
4. once ``store.key_usage()`` lists only the new id, delete the old key file.

A keyring re-reads the key files when it meets an unknown key id, so a process started
before a rotation still reads documents wrapped by one started after it.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from .crypto import KEY_SIZE, MissingKey, StoreError, check_key_id

ENV_KEY = "OPENDMP_MASTER_KEY"
ENV_KEY_ID = "OPENDMP_MASTER_KEY_ID"
KEY_DIR = "keys"

_FILE_RE = re.compile(r"master-([A-Za-z0-9._-]{1,32})\.key\Z")
_GENERATED_RE = re.compile(r"\d{8}T\d{12}Z\Z")
_GENERATED_FORMAT = "%Y%m%dT%H%M%S%fZ"


class KeyConfigError(StoreError):
    """The master key configuration is unusable (bad value, unsafe permissions, ...)."""


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    key: bytes = field(repr=False)
    #: where it came from: ``OPENDMP_MASTER_KEY`` or the key file's path.
    source: str = ""


class Keyring:
    """Master keys by id; :attr:`current` wraps, every key unwraps. Thread-safe."""

    def __init__(self, keys: Iterable[MasterKey], current: str, *,
                 reload: Callable[[], Iterable[MasterKey]] | None = None) -> None:
        self._keys: dict[str, MasterKey] = {}
        for key in keys:
            self._add(key)
        if current not in self._keys:
            raise KeyConfigError(f"current master key {current!r} is not in the keyring")
        self._current = current
        self._reload = reload
        self._lock = threading.Lock()

    def _add(self, key: MasterKey) -> None:
        check_key_id(key.key_id)
        if len(key.key) != KEY_SIZE:
            raise KeyConfigError(f"master key {key.key_id!r} is not {KEY_SIZE} bytes")
        old = self._keys.get(key.key_id)
        if old is not None and old.key != key.key:
            raise KeyConfigError(f"two different master keys have the id {key.key_id!r} "
                                 f"({old.source} and {key.source})")
        self._keys.setdefault(key.key_id, key)

    @property
    def current(self) -> MasterKey:
        return self._keys[self._current]

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def get(self, key_id: str) -> MasterKey:
        """The key ``key_id``; re-reads the key files once if unknown, then :class:`MissingKey`."""
        key = self._keys.get(key_id)
        if key is None and self._reload is not None:
            with self._lock:
                for found in self._reload():
                    if found.key_id not in self._keys:
                        self._add(found)
            key = self._keys.get(key_id)
        if key is None:
            raise MissingKey(key_id)
        return key

    def __repr__(self) -> str:
        return f"Keyring(current={self._current!r}, key_ids={self.key_ids!r})"


# ---------------------------------------------------------------------------- loading


def load_keyring(settings_env: Mapping[str, str], home: Path) -> Keyring:
    """The keyring configured by ``settings_env`` and ``<home>/keys`` (see the module
    docstring); creates the first key file when no key is configured at all.
    :class:`KeyConfigError` on any unusable setting or key file."""
    key_dir = Path(home) / KEY_DIR
    env_value = (settings_env.get(ENV_KEY) or "").strip()
    env_id = (settings_env.get(ENV_KEY_ID) or "").strip()
    if env_id and not env_value:
        raise KeyConfigError(f"{ENV_KEY_ID} is set but {ENV_KEY} is not")
    keys = _scan(key_dir)
    if env_value:
        secret = _decode(env_value, ENV_KEY)
        key_id = env_id or _fingerprint_id(secret)
        try:
            check_key_id(key_id)
        except ValueError as exc:
            raise KeyConfigError(f"{ENV_KEY_ID}: {exc}") from None
        current = MasterKey(key_id, secret, ENV_KEY)
        return Keyring([*keys.values(), current], key_id, reload=lambda: _scan(key_dir).values())
    if not _generated_ids(keys):
        with _key_dir_lock(Path(home)):
            keys = _scan(key_dir)           # another process may have won the race
            if not _generated_ids(keys):
                created = _create_key_file(key_dir, _next_key_id(keys))
                keys[created.key_id] = created
    return Keyring(keys.values(), max(_generated_ids(keys)),
                   reload=lambda: _scan(key_dir).values())


def rotate(home: Path) -> str:
    """Create a new master key file, newer than every other, and return its id.

    It becomes the current key of keyrings loaded afterwards, unless ``OPENDMP_MASTER_KEY``
    is set (which always wins). Existing documents stay readable with the old key until
    they are re-wrapped (``DocumentStore.rewrap``)."""
    with _key_dir_lock(Path(home)):
        key_dir = Path(home) / KEY_DIR
        return _create_key_file(key_dir, _next_key_id(_scan(key_dir))).key_id


def key_file(home: Path, key_id: str) -> Path:
    """Path of the key file of ``key_id``."""
    return Path(home) / KEY_DIR / f"master-{check_key_id(key_id)}.key"


# ---------------------------------------------------------------------------- helpers


def _decode(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(f"{where}: not base64") from None
    if len(key) != KEY_SIZE:
        raise KeyConfigError(f"{where}: a master key is {KEY_SIZE} bytes, this one is {len(key)} "
                             f"(make one with: head -c 32 /dev/urandom | base64)")
    return key


def _fingerprint_id(key: bytes) -> str:
    return "env-" + hashlib.sha256(b"OpenDMP master key id\0" + key).hexdigest()[:12]


def _generated_ids(keys: Mapping[str, MasterKey]) -> list[str]:
    return [key_id for key_id in keys if _GENERATED_RE.match(key_id)]


def _next_key_id(keys: Mapping[str, MasterKey]) -> str:
    """A UTC-time id later than every generated id, even if the clock went back."""
    now = datetime.now(timezone.utc)
    ids = _generated_ids(keys)
    if ids:
        newest = datetime.strptime(max(ids), _GENERATED_FORMAT)
        now = max(now.replace(tzinfo=None), newest + timedelta(microseconds=1))
    return now.strftime(_GENERATED_FORMAT)


def _check_private(st: os.stat_result, path: Path, what: str, fix: str) -> None:
    if st.st_mode & 0o077:
        raise KeyConfigError(
            f"{what} {path} is accessible to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"refusing to use it: {fix} {path}")


def _scan(key_dir: Path) -> dict[str, MasterKey]:
    """Every ``master-<id>.key`` in ``key_dir`` (none if it does not exist)."""
    try:
        st = os.stat(key_dir)
    except FileNotFoundError:
        return {}
    if not stat.S_ISDIR(st.st_mode):
        raise KeyConfigError(f"{key_dir} is not a directory")
    _check_private(st, key_dir, "key directory", "chmod 700")
    keys: dict[str, MasterKey] = {}
    for entry in sorted(os.scandir(key_dir), key=lambda e: e.name):
        match = _FILE_RE.match(entry.name)
        if match:
            keys[match.group(1)] = _read_key_file(Path(entry.path), match.group(1))
    return keys


def _read_key_file(path: Path, key_id: str) -> MasterKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyConfigError(f"cannot open key file {path}: {exc.strerror} "
                             "(key files must be regular files, not symbolic links)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())          # the opened file itself: no check-then-use race
        if not stat.S_ISREG(st.st_mode):
            raise KeyConfigError(f"key file {path} is not a regular file")
        _check_private(st, path, "key file", "chmod 600")
        text = f.read(1024)
    try:
        return MasterKey(key_id, _decode(text.decode("ascii"), f"key file {path}"), str(path))
    except UnicodeDecodeError:
        raise KeyConfigError(f"key file {path}: not base64") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_key_dir(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    key_dir = home / KEY_DIR
    try:
        os.mkdir(key_dir, 0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(key_dir, 0o700)           # whatever the umask
        _fsync_dir(home)
    _check_private(os.stat(key_dir), key_dir, "key directory", "chmod 700")
    return key_dir


@contextlib.contextmanager
def _key_dir_lock(home: Path) -> Iterator[None]:
    """Serializes key creation between processes (several workers starting at once)."""
    key_dir = _ensure_key_dir(home)
    fd = os.open(key_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create_key_file(key_dir: Path, key_id: str) -> MasterKey:
    """Write a new random key as ``master-<key_id>.key``, mode 0600, durably and atomically
    (a temporary file hard-linked into place: never a half-written or clobbered key)."""
    path = key_dir / f"master-{check_key_id(key_id)}.key"
    tmp = key_dir / f".master-{key_id}.key.{os.getpid()}.tmp"
    secret = os.urandom(KEY_SIZE)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, base64.b64encode(secret) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        raise KeyConfigError(f"key file {path} already exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(key_dir)
    return MasterKey(key_id, secret, str(path))
