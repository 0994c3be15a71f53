"""Benchmarks of the running product (not tests: they print tables, they assert nothing
about timings). ``python -m benchmarks.registry --help``; see benchmarks/README.md.

The benchmarks reuse the test harness (``tests/harness``: a throwaway PostgreSQL and
the real gunicorn server) and the test data builders (``tests/factory.py``), so
``tests/`` is put on ``sys.path`` here.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
