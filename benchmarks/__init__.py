"""Benchmarks of the running product (not tests: they print tables, they assert nothing
about timings). ``python -m benchmarks.registry --help``; see benchmarks/README.md.

The benchmarks reuse the test harness (``tests/harness``: a throwaway PostgreSQL and
the real gunicorn server) and the test data builders (``tests/factory.py``), so
``tests/`` is put on ``sys.path`` here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


#: where the benchmarks' server homes go unless $OPENDMP_BENCH_DIR says otherwise: where a
#: production install keeps its data (FHS /var/lib), else ./var/bench
DEFAULT_BENCH_DIRS = (Path("/var/lib/opendmp-bench"), ROOT / "var" / "bench")


def work_dir(prefix: str) -> Path:
    """A new directory for a benchmark's server home (document store, spool, keys),
    removed by the benchmark when done: under ``$OPENDMP_BENCH_DIR``, else
    ``/var/lib/opendmp-bench`` (where a production install keeps its data), else
    ``var/bench``.

    Not ``/tmp`` nor the checkout: on the ext4 of the machines measured here, creating a
    file (allocating an inode) in a directory under ``/tmp`` or ``/work`` cost 0.4–0.9 ms
    of kernel CPU, against 0.015 ms under ``/var/lib`` — the state of the file system's
    block groups, not the product. :func:`file_creation_us` measures it, and the
    repository benchmark prints it with the machine facts. The parent gets the ext4
    top-directory flag (:func:`mark_top_directory`), so that a run does not pay for the
    files the previous runs deleted there."""
    env = os.environ.get("OPENDMP_BENCH_DIR")
    for base in ([Path(env)] if env else DEFAULT_BENCH_DIRS):
        try:
            base.mkdir(parents=True, exist_ok=True)
            mark_top_directory(base)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        except OSError:
            if env:
                raise
    raise OSError("no writable benchmark directory")


def mark_top_directory(directory: Path) -> bool:
    """Set ext4's "top of directory hierarchy" flag (``chattr +T``) on ``directory``, so
    that each home made in it is placed like a top-level directory, in a block group
    with free inodes (the Orlov allocator) instead of next to its parent, where earlier
    runs created and deleted their thousands of documents. Measured on this machine's
    ext4 (no journal), in a parent where runs had just been removed: 1.03 ms of kernel
    CPU to create a file and 0.44 ms to make a directory, against 0.022 and 0.03 ms with
    the flag. Best effort: False where the file system or ``chattr`` has no such flag."""
    try:
        done = subprocess.run(["chattr", "+T", str(directory)], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def file_creation_us(directory: Path, n: int = 50) -> float:
    """Kernel + user CPU µs to create (and close) one empty file in ``directory``. The
    files stay (in a ``.create-probe-*`` directory, removed with the benchmark's home):
    deleting them would itself slow the next allocations (see :func:`work_dir`)."""
    probe = Path(tempfile.mkdtemp(prefix=".create-probe-", dir=directory))
    start = time.thread_time()
    for i in range(n):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.thread_time() - start) / n * 1e6


def settle_file_system(directory: Path, limit_us: float = 100.0, timeout: float = 400.0,
                       log=print) -> float:
    """Flush the file system (``sync``) and wait until creating a file in ``directory``
    costs less than ``limit_us`` (ext4 without a journal skips inodes freed in the last
    60 s, 360 s while their inode table block is dirty: a benchmark started right after
    another one's cleanup would measure that cleanup). Returns the last cost measured."""
    deadline = time.monotonic() + timeout
    os.sync()
    cost = file_creation_us(directory)
    while cost > limit_us and time.monotonic() < deadline:
        log(f"creating a file in {directory} costs {cost:.0f} µs (inodes freed recently): "
            "waiting")
        time.sleep(15)
        os.sync()
        cost = file_creation_us(directory)
    return cost
