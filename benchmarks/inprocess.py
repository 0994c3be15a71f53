"""Server CPU per request, measured in-process: the WSGI application (``opendmp.app.
create_app``) called directly, one thread, no gunicorn and no HTTP, on the same durable
PostgreSQL and dataset as benchmarks.registry.

    python -m benchmarks.inprocess [--entries 20000] [--patients 2000] [--requests 2000]
        [--profile] [--top 25]

For each operation it prints the CPU time (``time.process_time``) and wall time per
request: wall − CPU is the time spent waiting for PostgreSQL (including the WAL flush of
every ITI-42 commit). ``--profile`` adds a cProfile table per operation (cProfile
inflates the cost of many small calls; use the shares, not the absolute numbers).
This is the tool to find where a request's CPU goes; benchmarks.registry measures the
whole system.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time

import benchmarks  # noqa: F401  (tests/ on sys.path)
from opendmp.app import create_app
from opendmp.config import Settings
from opendmp.db import migrate

from . import client as C
from .dataset import Dataset
from .pg import BenchCluster


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--patients", type=int, default=2_000)
    p.add_argument("--requests", type=int, default=2_000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra OPENDMP_* setting of the application, e.g. "
                        "OPENDMP_AUDIT_REPOSITORIES=none (repeatable)")
    a = p.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in a.env)
    with BenchCluster() as cluster:
        url = cluster.create_database("opendmp_bench")
        migrate(url)
        ds = Dataset(url, seed=a.seed)
        ds.load(a.patients, a.entries, log=lambda m: None)
        app = create_app(Settings.from_env({"OPENDMP_DATABASE_URL": url,
                                            "OPENDMP_HOME": cluster.base_dir, **extra}))
        endpoint = "http://127.0.0.1:8080/xds/registry"
        workloads = [
            C.register(endpoint, ds.patients_cx, ds.root + ".8"),
            C.find_documents(endpoint, ds.patients_cx),
            C.get_documents(endpoint, ds.values.document_uuid, ds.submissions),
        ]
        print(f"{a.entries:,} entries, {a.patients:,} patients; {a.requests:,} requests per "
              "operation, one thread, WSGI app called directly"
              + (f"; {' '.join(a.env)}" if a.env else "") + "\n")
        print("| operation | CPU ms/request | wall ms/request | waiting (wall − CPU) ms |")
        print("|---|---:|---:|---:|")
        profiles = {}
        for wl in workloads:
            rng = random.Random(a.seed)
            bodies = [wl.body(rng, 1, i) for i in range(a.requests + 50)]
            for b in bodies[:50]:  # warm-up: pools, caches, prepared statements
                call(app, b, wl.action)
            prof = cProfile.Profile() if a.profile else None
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            for b in bodies[50:]:
                call(app, b, wl.action)
            if prof:
                prof.disable()
            cpu = (time.process_time() - c0) / a.requests * 1000
            wall = (time.perf_counter() - w0) / a.requests * 1000
            print(f"| {wl.name} | {cpu:.2f} | {wall:.2f} | {wall - cpu:.2f} |")
            profiles[wl.name] = prof
        if a.profile:
            for name, prof in profiles.items():
                for key in ("tottime", "cumulative"):
                    s = io.StringIO()
                    pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(a.top)
                    print(f"\n### {name} by {key}\n```\n{s.getvalue().strip()}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
