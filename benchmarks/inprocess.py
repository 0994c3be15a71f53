"""Server CPU per request, measured in-process: the WSGI application (``opendmp.app.
create_app``) called directly, one thread, no gunicorn and no HTTP, on the same durable
PostgreSQL and dataset as benchmarks.registry, or on SQLite.

    python -m benchmarks.inprocess [--db postgresql|sqlite] [--entries 20000]
        [--patients 2000] [--requests 2000] [--only ITI-42,FindDocuments,GetDocuments]
        [--breakdown] [--profile] [--top 25] [--env NAME=VALUE]

For each operation it prints the CPU time (user + system of this process; mean, and the
best of ``--rounds`` rounds, the robust figure on a shared machine) and wall time per
request: wall − CPU is the time spent waiting for the database (including the WAL
flush of every ITI-42 commit on PostgreSQL), and the SQL statements and commits per
request (SQLAlchemy events). ``--breakdown`` times the registry's steps (wrappers around
the product's functions, inclusive, nested steps indented); ``--profile`` adds a cProfile
table per operation (cProfile inflates the cost of many small calls; use the shares, not
the absolute numbers). On PostgreSQL the dataset is benchmarks.dataset's (binary COPY);
on SQLite (a WAL file in a temporary directory) ``--entries`` submissions are registered
through the same in-process ITI-42 before measuring. This is the tool to find where a
request's CPU goes; benchmarks.registry measures the whole system.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import sys
import time
from pathlib import Path

import benchmarks  # noqa: F401  (tests/ on sys.path)
from benchmarks import work_dir
import factory as F
from opendmp.app import create_app
from opendmp.config import Settings
from opendmp.db import make_engine, migrate, write_transaction
from registry.hl7types import parse_cx

from . import client as C
from .repository_inprocess import Breakdown, Counters


def call(app, body: bytes, action: str) -> bytes:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/xds/registry", "QUERY_STRING": "",
        "CONTENT_TYPE": f'application/soap+xml; charset=UTF-8; action="{action}"',
        "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
        "REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
        "wsgi.url_scheme": "http",
    }
    status = []
    out = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    if not status or not status[0].startswith("200") or C.SUCCESS not in out:
        raise RuntimeError(f"request failed: {status} {out[:800]!r}")
    return out


def instrument(bd: Breakdown) -> None:
    """Wrap the registry's steps (names as in the product code)."""
    import soapstack.wsgi as wsgi
    from registry import iti18, iti42, service, store

    def wrap(owner, name, label):  # steps that exist in this revision
        if hasattr(owner, name):
            bd.wrap(owner, name, label)

    wrap(wsgi, "parse_envelope", "soapstack parse_envelope")
    wrap(iti42, "read_submit_objects_request", "read_submit_objects_request (ebRIM -> model)")
    wrap(iti42, "register_submission", "register_submission")
    wrap(iti42, "begin_registration", "  begin_registration (validate, UUIDs, send the reads)")
    wrap(iti42, "validate_submission", "    validate_submission")
    wrap(iti42, "assign_uuids", "    assign_uuids")
    wrap(iti42.Registration, "complete", "  Registration.complete (reads' results, checks, insert)")
    wrap(iti42, "_check_registry", "  _check_registry (existing objects + uniqueIds)")
    wrap(store, "objects_by_uuid", "  store.objects_by_uuid")
    wrap(iti42, "_check_unique_ids", "  _check_unique_ids")
    wrap(store, "insert_objects", "  store.insert_objects")
    wrap(store, "object_row", "    store.object_row (columns + ebRIM)")
    wrap(store, "serialize", "      store.serialize (ebRIM bytes)")
    wrap(service, "registry_stored_query", "registry_stored_query (ITI-18)")
    wrap(iti18, "run", "  queries.run")
    wrap(store, "patient_pk", "    store.patient_pk")


def sqlite_dataset(url: str, n_patients: int, n_entries: int, seed: int, app
                   ) -> tuple[list[str], list[str]]:
    """Patients added directly, then ``n_entries`` ITI-42 registrations through ``app``;
    (patient CXs, DocumentEntry UUIDs)."""
    from registry import store

    rng = random.Random(seed)
    engine = make_engine(url)
    try:
        cxs = [F.new_ins(rng) for _ in range(n_patients)]
        with write_transaction(engine) as conn:
            for cx in cxs:
                store.add_patient(conn, parse_cx(cx).canonical)
        wl = C.register("http://127.0.0.1:8080/xds/registry", cxs, "1.2.250.1.999.77")
        for i in range(n_entries):
            call(app, wl.body(rng, 0, i), wl.action)
        with engine.connect() as conn:
            uuids = list(conn.exec_driver_sql(
                "SELECT uuid FROM registry_object WHERE kind IN (1, 2)").scalars())
    finally:
        engine.dispose()
    return cxs, uuids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--patients", type=int, default=2_000)
    p.add_argument("--requests", type=int, default=2_000)
    p.add_argument("--only", default="", help="comma-separated operations to measure")
    p.add_argument("--rounds", type=int, default=5,
                   help="the requests are timed in this many rounds; the best round is "
                        "printed beside the mean (other load only ever adds CPU time)")
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra OPENDMP_* setting of the application, e.g. "
                        "OPENDMP_AUDIT_REPOSITORIES=none (repeatable)")
    a = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in a.env)
    home = Path(work_dir("opendmp-bench-inproc-"))
    cluster = None
    try:
        endpoint = "http://127.0.0.1:8080/xds/registry"
        if a.db == "postgresql":
            from .dataset import Dataset
            from .pg import BenchCluster
            cluster = BenchCluster()
            cluster.start()
            url = cluster.create_database("opendmp_bench")
            migrate(url)
            ds = Dataset(url, seed=a.seed)
            ds.load(a.patients, a.entries, log=lambda m: None)
            app = create_app(Settings.from_env({"OPENDMP_DATABASE_URL": url,
                                                "OPENDMP_HOME": str(home), **extra}))
            patients, doc_uuid, n_docs = ds.patients_cx, ds.values.document_uuid, ds.submissions
            root = ds.root + ".8"
        else:
            url = f"sqlite:///{home / 'opendmp.sqlite3'}"
            migrate(url)
            app = create_app(Settings.from_env({"OPENDMP_DATABASE_URL": url,
                                                "OPENDMP_HOME": str(home), **extra}))
            patients, uuids = sqlite_dataset(url, a.patients, a.entries, a.seed, app)
            doc_uuid, n_docs = uuids.__getitem__, len(uuids)
            root = "1.2.250.1.999.78"
        workloads = [
            C.register(endpoint, patients, root),
            C.find_documents(endpoint, patients),
            C.get_documents(endpoint, doc_uuid, n_docs),
        ]
        if a.only:
            wanted = {x.strip() for x in a.only.split(",")}
            workloads = [w for w in workloads if w.name in wanted]
        counters = Counters()
        print(f"{a.db}, {a.entries:,} entries, {a.patients:,} patients; {a.requests:,} requests "
              "per operation, one thread, WSGI app called directly"
              + (f"; {' '.join(a.env)}" if a.env else "") + "\n")
        print("| operation | CPU ms/request | best round | wall ms/request "
              "| waiting (wall − CPU) ms | SQL statements/request | commits/request |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        profiles, breakdowns = {}, {}
        for wl in workloads:
            rng = random.Random(a.seed)
            bodies = [wl.body(rng, 1, i) for i in range(a.requests + 50)]
            for b in bodies[:50]:  # warm-up: pools, caches, prepared statements
                call(app, b, wl.action)
            bd = Breakdown() if a.breakdown else None
            if bd:
                instrument(bd)
            prof = cProfile.Profile() if a.profile else None
            counters.reset()
            t0, w0 = os.times(), time.perf_counter()
            if prof:
                prof.enable()
            measured = bodies[50:]
            per_round = max(1, len(measured) // max(1, a.rounds))
            best = float("inf")
            for r0 in range(0, len(measured), per_round):
                chunk = measured[r0:r0 + per_round]
                c0 = os.times()
                for b in chunk:
                    call(app, b, wl.action)
                c1 = os.times()
                if len(chunk) == per_round:
                    best = min(best, (c1.user - c0.user + c1.system - c0.system)
                               / len(chunk) * 1000)
            if prof:
                prof.disable()
            t1 = os.times()
            cpu = (t1.user - t0.user + t1.system - t0.system) / a.requests * 1000
            wall = (time.perf_counter() - w0) / a.requests * 1000
            n = a.requests
            print(f"| {wl.name} | {cpu:.2f} | {best:.2f} | {wall:.2f} | {wall - cpu:.2f} "
                  f"| {counters.counts['SQL statements'] / n:.1f} "
                  f"| {counters.counts['commits'] / n:.1f} |")
            profiles[wl.name] = prof
            if bd:
                bd.remove()
                breakdowns[wl.name] = bd
        for name, bd in breakdowns.items():
            print(f"\n### {name}: steps (timers add ~0.002 ms per wrapped call)\n")
            print(bd.table(a.requests))
        if a.profile:
            for name, prof in profiles.items():
                for key in ("tottime", "cumulative"):
                    s = io.StringIO()
                    pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(a.top)
                    print(f"\n### {name} by {key}\n```\n{s.getvalue().strip()}\n```")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
