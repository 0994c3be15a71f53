"""CPU of the registry's transactions called directly (no SOAP, no WSGI), best of several
rounds: the figure to compare two revisions of registry/ on a shared machine.

    python -m benchmarks.registry_direct [--db postgresql|sqlite] [--rounds 7]

``register_submission`` of a fresh ``tests/factory`` submission (1 DocumentEntry +
SubmissionSet + HasMember, symbolic ids) in its own write transaction (pool checkout,
patient lock, checks, inserts, commit), and ``registry_stored_query`` FindDocuments
(patient + Approved, LeafClass, 10 entries) in a read transaction. CPU is this process's
user + system time (not PostgreSQL's); the best round is kept because other load on the
machine only ever adds to it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import benchmarks  # noqa: F401  (tests/ on sys.path)
from benchmarks import work_dir
import factory as F
import xds
from opendmp.db import make_engine, migrate, read_transaction, write_transaction
from registry import store
from registry.affinity import AffinityDomain
from registry.hl7types import parse_cx
from registry.iti18 import registry_stored_query
from registry.iti42 import register_submission


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(url: str, rounds: int) -> dict[str, float]:
    engine = make_engine(url)
    domain = AffinityDomain.from_settings({})
    patients = [F.new_ins() for _ in range(50)]
    queried = F.new_ins()  # 10 documents, not among the registering patients
    with write_transaction(engine) as conn:
        for cx in [queried, *patients]:
            store.add_patient(conn, parse_cx(cx).canonical)
    for _ in range(10):
        with write_transaction(engine) as conn:
            register_submission(conn, F.submission(queried), domain)
    request = xds.adhoc_query(xds.FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": f"'{queried}'",
        "$XDSDocumentEntryStatus": f"('{xds.APPROVED}')"}, "LeafClass")
    n_reg, n_find = 400, 1000
    subs = iter([F.submission(patients[i % 50]) for i in range(50 + rounds * n_reg)])

    def register() -> None:
        with write_transaction(engine) as conn:
            register_submission(conn, next(subs), domain)

    def find() -> None:
        with read_transaction(engine) as conn:
            out = registry_stored_query(conn, request, domain)
        assert out.count(b"<rim:ExtrinsicObject ") == 10, out[:500]

    result = {}
    for name, fn, n, warm in (("ITI-42 register_submission", register, n_reg, 50),
                              ("ITI-18 FindDocuments", find, n_find, 100)):
        for _ in range(warm):
            fn()
        best = float("inf")
        for _ in range(rounds):
            c = _cpu()
            for _ in range(n):
                fn()
            best = min(best, (_cpu() - c) / n * 1000)
        result[name] = best
    engine.dispose()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.registry_direct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    home = work_dir("opendmp-bench-direct-")
    try:
        if a.db == "sqlite":
            url = f"sqlite:///{home}/opendmp.sqlite3"
            migrate(url)
            result = measure(url, a.rounds)
        else:
            from .pg import BenchCluster
            with BenchCluster() as cluster:
                url = cluster.create_database("opendmp_bench_direct")
                migrate(url)
                result = measure(url, a.rounds)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for name, ms in result.items():
        print(f"{a.db}\t{name}\t{ms:.3f} ms CPU (best of {a.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
