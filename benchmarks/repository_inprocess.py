"""Server cost of one ITI-41 / ITI-43, measured in-process: the WSGI application
(``opendmp.app.create_app``) called directly, one thread, no gunicorn and no HTTP, with
the same documents and requests as benchmarks.repository.

    python -m benchmarks.repository_inprocess [--db postgresql|sqlite] [--requests 300]
        [--sizes "10 KB,140 KB,5 MB"] [--profile] [--top 30] [--sort tottime,cumulative]

For each document size it prints the CPU time (``time.process_time``) and the wall time
per request: wall − CPU is waiting (fsync, the database's commit). ``--breakdown`` times
the steps of ITI-41 and ITI-43 (wrappers around the product's functions, inclusive times,
nested steps indented); ``--profile`` adds cProfile tables (cProfile inflates many small
calls: read the shares, not the absolute numbers). The request bodies are built before
the clock starts.
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
from opendmp.app import create_app
from opendmp.config import Settings
from opendmp.db import migrate
from repository.source import ITI41_ACTION, ITI43_ACTION, retrieve_request
from soapstack.client import build_envelope
from soapstack.mtom import mtom_message

from . import repository as R

SUCCESS = b"ResponseStatusType:Success"


def call(app, body: bytes, content_type: str) -> bytes:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/xds/repository", "QUERY_STRING": "",
        "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "wsgi.url_scheme": "http",
    }
    status = []
    result = app(environ, lambda s, h, exc=None: status.append(s))
    try:
        out = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not status or not status[0].startswith("200") or SUCCESS not in out[:4096]:
        raise RuntimeError(f"request failed: {status} {out[:1200]!r}")
    return out


class Breakdown:
    """Inclusive wall and CPU time of named steps, by wrapping functions in place."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}
        self.order: list[str] = []
        self._undo: list = []

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        stats = self.stats.setdefault(label, [0, 0.0, 0.0])
        self.order.append(label)

        def timed(*args, **kwargs):
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                stats[0] += 1
                stats[1] += time.perf_counter() - w0
                stats[2] += time.process_time() - c0

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def reset(self) -> None:
        for v in self.stats.values():
            v[:] = [0, 0.0, 0.0]

    def remove(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def table(self, requests: int) -> str:
        out = ["| step (inclusive; indented = inside the step above) | calls/request "
               "| wall ms/request | CPU ms/request |", "|---|---:|---:|---:|"]
        for label in self.order:
            n, wall, cpu = self.stats[label]
            if n:
                out.append(f"| {label} | {n / requests:.1f} | {wall / requests * 1000:.2f} "
                           f"| {cpu / requests * 1000:.2f} |")
        return "\n".join(out)


class Counters:
    """Per-request counts of what costs a round trip, a disk flush or a metadata operation:
    SQL statements and commits (SQLAlchemy events, every engine), ``os.fsync`` calls (document
    store and anything else in Python), ``os.mkdir`` and files created (``os.open``
    with ``O_CREAT``)."""

    def __init__(self) -> None:
        import os as _os

        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.counts = {"SQL statements": 0, "commits": 0, "fsync": 0, "mkdir": 0,
                       "files created": 0}
        counts = self.counts
        event.listen(Engine, "commit", lambda conn: counts.__setitem__(
            "commits", counts["commits"] + 1))
        event.listen(Engine, "before_cursor_execute", lambda *a: counts.__setitem__(
            "SQL statements", counts["SQL statements"] + 1))
        fsync, mkdir, open_ = _os.fsync, _os.mkdir, _os.open

        def counted_fsync(fd):
            counts["fsync"] += 1
            return fsync(fd)

        def counted_mkdir(*a, **k):
            counts["mkdir"] += 1
            return mkdir(*a, **k)

        def counted_open(path, flags, *a, **k):
            if flags & _os.O_CREAT:
                counts["files created"] += 1
            return open_(path, flags, *a, **k)

        _os.fsync, _os.mkdir, _os.open = counted_fsync, counted_mkdir, counted_open

    def reset(self) -> None:
        for k in self.counts:
            self.counts[k] = 0

    def line(self, requests: int) -> str:
        return ", ".join(f"{k} {v / requests:.1f}" for k, v in self.counts.items())


def instrument(app, bd: Breakdown) -> None:
    """Wrap the steps of ITI-41 / ITI-43 (names as in the product code)."""
    import soapstack.wsgi as wsgi
    from registry import iti42, store as rstore
    from repository import gateway, iti41, iti43, service, storage

    reader = app.readers["multipart/related"]
    holder = type("Readers", (), {"read_mtom": staticmethod(reader)})
    bd.wrap(holder, "read_mtom", "soapstack read_mtom (MTOM body -> root + spooled parts)")
    app.readers["multipart/related"] = lambda *a, **k: holder.read_mtom(*a, **k)
    bd.wrap(wsgi, "parse_envelope", "soapstack parse_envelope")
    bd.wrap(service, "provide_and_register", "repository.iti41.provide_and_register")
    bd.wrap(iti41, "read_submit_objects_request", "  read_submit_objects_request (ebRIM -> model)")
    bd.wrap(iti41, "_store_one", "  _store_one (stream, encrypt, stage, checks)")
    bd.wrap(storage.FileSystemStore, "begin", "    store.begin (data key, key wrap, open)")
    bd.wrap(storage._FilePendingWrite, "write", "    writer.write (AES-GCM, write)")
    bd.wrap(storage._FilePendingWrite, "finish_in_background",
            "    writer.finish_in_background (seal, rename to .staged; fsyncs handed over)")
    from cda import crosscheck
    bd.wrap(crosscheck.Intake, "check", "    cda Intake.check (parse CDA, compare header)")
    bd.wrap(iti41, "_register_in_one_transaction",
            "  one write transaction: index row + registration + CDA summary")
    bd.wrap(gateway, "begin_registration",
            "    begin_registration (validate, UUIDs, send the registry's reads)")
    bd.wrap(iti42, "validate_submission", "      validate_submission")
    bd.wrap(iti41, "_index_rows", "    _index_rows (index rows' result: the round trip)")
    bd.wrap(iti42.Registration, "check", "    Registration.check (reads' results, checks)")
    bd.wrap(iti42, "_check_unique_ids", "      _check_unique_ids")
    bd.wrap(iti42.Registration, "store", "    Registration.store (registry insert sent)")
    bd.wrap(rstore, "insert_objects", "      store.insert_objects")
    bd.wrap(rstore, "serialize", "        store.serialize (ebRIM bytes)")
    bd.wrap(crosscheck.Intake, "after_register", "    cda Intake.after_register (summary)")
    bd.wrap(storage.FileSystemStore, "commit", "  store.commit (rename into objects/)")
    bd.wrap(service, "retrieve_document_set", "repository.iti43.retrieve_document_set")
    bd.wrap(iti43, "_read_verified", "  _read_verified (decrypt + SHA-1 before answering)")
    bd.wrap(storage.FileSystemStore, "open", "  store.open (header, key unwrap)")


def iti41_bodies(job: R.Iti41Job, n: int, seed: int) -> list[tuple[str, bytes, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        uid, (body, attachments) = job.prepare(rng, seed, i)
        env = build_envelope(ITI41_ACTION, job.url, body)
        ctype, _length, chunks = mtom_message(env, attachments, action=ITI41_ACTION)
        out.append((uid, b"".join(chunks), ctype))
    return out


def iti43_bodies(url: str, repo_uid: str, uids: list[str], n: int, seed: int
                 ) -> list[tuple[str, bytes, str]]:
    rng = random.Random(seed)
    ctype = f'application/soap+xml; charset=UTF-8; action="{ITI43_ACTION}"'
    return [(uid, build_envelope(ITI43_ACTION, url, retrieve_request(repo_uid, [uid])), ctype)
            for uid in (uids[rng.randrange(len(uids))] for _ in range(n))]


def measure(app, bodies, profile: cProfile.Profile | None) -> tuple[float, float, float]:
    """(CPU ms, wall ms, kernel CPU ms) per request."""
    t0, w0 = os.times(), time.perf_counter()
    if profile:
        profile.enable()
    for _uid, body, ctype in bodies:
        call(app, body, ctype)
    if profile:
        profile.disable()
    t1, n = os.times(), len(bodies)
    user, system = t1.user - t0.user, t1.system - t0.system
    return ((user + system) / n * 1000, (time.perf_counter() - w0) / n * 1000,
            system / n * 1000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.repository_inprocess",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--requests", type=int, default=300, help="requests per operation and "
                   "size (5 MB: a fifth of it)")
    p.add_argument("--sizes", default="10 KB,140 KB,5 MB")
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime,cumulative")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra OPENDMP_* setting for the application (also put in os.environ, "
                        "which some components read), for A/B comparisons; repeatable")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    extra_env = dict(x.split("=", 1) for x in a.env)
    os.environ.update(extra_env)
    wanted = [s.strip() for s in a.sizes.split(",")]
    home = Path(work_dir("opendmp-bench-inproc-"))
    cluster = None
    try:
        if a.db == "postgresql":
            from .pg import BenchCluster
            cluster = BenchCluster()
            cluster.start()
            url = cluster.create_database("opendmp_bench_repo")
        else:
            url = f"sqlite:///{home / 'opendmp.sqlite3'}"
        migrate(url)
        patients = [cx for cx, _ in R.register_patients(url, 200, a.seed)]
        app = create_app(Settings.from_env({"OPENDMP_DATABASE_URL": url,
                                            "OPENDMP_HOME": str(home), **extra_env}))
        repo_uid = (home / "repository-unique-id").read_text().strip()
        endpoint = "http://127.0.0.1:8080/xds/repository"
        print(f"{R.db_facts(a.db, url)}; one thread, WSGI app called directly"
              + (f"; {' '.join(a.env)}" if a.env else "") + "\n")
        print("| operation | document | requests | CPU ms/request | of which kernel ms "
              "| wall ms/request | waiting (wall − CPU) ms |")
        print("|---|---|---:|---:|---:|---:|---:|")
        profiles = {}
        breakdowns = {}
        bd = Breakdown() if a.breakdown else None
        counters = Counters() if a.breakdown else None
        if bd is not None:
            instrument(app, bd)
        for k, d in enumerate(R.documents(a.seed)):
            if d.label not in wanted:
                continue
            n = a.requests if d.size < R.MIB else max(10, a.requests // 5)
            job = R.Iti41Job(endpoint, patients, d, f"1.2.250.1.999.{a.seed}4242.{k}")
            warm = iti41_bodies(job, 20, a.seed)
            bodies = iti41_bodies(job, n, a.seed + 1)
            measure(app, warm, None)
            prof = cProfile.Profile() if a.profile else None
            if bd is not None:
                bd.reset()
                counters.reset()
            cpu, wall, sys_ = measure(app, bodies, prof)
            if bd is not None:
                breakdowns[f"ITI-41 {d.label}"] = (bd.table(n) + "\n\nPer request: "
                                                   + counters.line(n) + ".")
            print(f"| ITI-41 | {d.label} | {n} | {cpu:.2f} | {sys_:.2f} | {wall:.2f} "
                  f"| {wall - cpu:.2f} |")
            profiles[f"ITI-41 {d.label}"] = prof
            uids = [u for u, _, _ in warm + bodies]
            reads = iti43_bodies(endpoint, repo_uid, uids, n, a.seed)
            measure(app, reads[:20], None)
            prof = cProfile.Profile() if a.profile else None
            if bd is not None:
                bd.reset()
                counters.reset()
            cpu, wall, sys_ = measure(app, reads, prof)
            if bd is not None:
                breakdowns[f"ITI-43 {d.label}"] = (bd.table(n) + "\n\nPer request: "
                                                   + counters.line(n) + ".")
            print(f"| ITI-43 | {d.label} | {n} | {cpu:.2f} | {sys_:.2f} | {wall:.2f} "
                  f"| {wall - cpu:.2f} |")
            profiles[f"ITI-43 {d.label}"] = prof
        for name, table in breakdowns.items():
            print(f"\n### {name}: steps\n\n{table}")
        if a.profile:
            for name, prof in profiles.items():
                for key in a.sort.split(","):
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
