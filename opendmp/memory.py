"""Resident memory of the gunicorn workers: the process-level settings of ``opendmp
serve`` (issue #3: worker RSS under 64 MB, flat with document size). A worker's RSS
counts every page it maps, those it shares with the master included, so what matters
is what is resident at all:

- ``opendmp serve`` runs under ``python -OO`` (:func:`reexec_optimized`): the
  docstrings of every imported module (SQLAlchemy's are megabytes) are not loaded.
  ``-OO`` also skips ``assert`` statements; OpenDMP checks its input explicitly, never
  with ``assert``. ``OPENDMP_PYTHON_OPTIMIZE=0`` keeps the interpreter's flags.
- The application is loaded once, in the master (gunicorn ``preload_app``); the memory
  the imports freed (compiling sources without a ``.pyc``, temporary objects) is
  returned to the kernel (``malloc_trim(3)``), and the objects are frozen
  (``gc.freeze()``) before the workers fork, so that a collection in a worker does not
  copy the pages it shares with the master.
- glibc malloc gives each thread its own arena (up to 8 per core), which keeps the
  buffers freed by that thread's requests: ``OPENDMP_MALLOC_ARENAS`` (default 1)
  caps them (``mallopt(M_ARENA_MAX)``); the request threads run under the GIL and
  seldom contend for the arena lock.
- gunicorn reads a request body of known length up to 1 MiB ahead of the
  application's reads and copies what it holds back at each read (two copies of
  ~1 MiB per 64 KiB read): its socket reads are capped to the MTOM reader's block
  (:data:`soapstack.mtom.READ_SIZE`). A large ITI-41 no longer adds ~3.5 MiB to the
  worker, and its body costs half the CPU.

Each function is a no-op where the C library or gunicorn lacks the hook (musl, other
servers).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import subprocess
import sys

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
    ``malloc_trim`` is not available. No ``gc.collect()`` first: it would write to
    every object of the process, turning the pages shared with the processes forked
    earlier (the PIX and ATNA listeners) into private copies (measured: worker PSS
    25.3 -> 28.8 MiB, RSS unchanged)."""
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


def reexec_optimized(command: list[str], env: dict[str, str]) -> None:
    """Replace this process (same pid, same open files) by ``python -OO -m opendmp.cli
    *command`` with the interpreter's other flags, unless it runs with ``-OO`` already
    or ``OPENDMP_PYTHON_OPTIMIZE`` is ``0``. Returns only when nothing was done."""
    if sys.flags.optimize >= 2 or env.get("OPENDMP_PYTHON_OPTIMIZE", "2").strip() == "0":
        return
    flags = [f for f in subprocess._args_from_interpreter_flags() if not f.startswith("-O")]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-OO", *flags, "-m", "opendmp.cli", *command])


def malloc_arenas(env: dict[str, str]) -> int:
    """``OPENDMP_MALLOC_ARENAS``: the number of malloc arenas per worker (default 1;
    0 leaves glibc's default, 8 per core)."""
    raw = env.get("OPENDMP_MALLOC_ARENAS", "").strip()
    try:
        return int(raw) if raw else 1
    except ValueError:
        log.warning("OPENDMP_MALLOC_ARENAS=%r is not a number: using 1", raw)
        return 1
