"""Document Registry benchmark: ITI-42 and ITI-18 on the real server as the registry grows.

    python -m benchmarks.registry [--entries 1000000] [--patients 100000]
        [--checkpoints 10000,100000,1000000] [--seconds 10] [--clients 4] [--keep]

Starts a throwaway, durable PostgreSQL (benchmarks.pg) and the real server (gunicorn,
tests/harness ServerProcess), loads the dataset in stages (benchmarks.dataset: rows
made by the product's ITI-42 code path, copied in with binary COPY), and at each
checkpoint measures through HTTP with real SOAP requests (benchmarks.client):

- ITI-42 Register of a fresh 1-document submission for an existing patient,
- ITI-18 FindDocuments (patient + Approved, LeafClass) for a random patient,
- ITI-18 GetDocuments by one entryUUID (LeafClass) for a random document,

each first with one client (latency percentiles) and then with ``--clients`` concurrent
clients (throughput), closed loop, on keep-alive connections. Prints markdown tables;
asserts nothing about timings. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import benchmarks  # noqa: F401  (tests/ on sys.path)
from harness import ServerProcess
from opendmp.db import make_engine, migrate

from . import client as C
from . import profile as P
from .dataset import Dataset
from .pg import BenchCluster, explain_find_documents, explain_get_documents, server_facts, sizes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.registry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000,
                   help="DocumentEntries loaded at the last checkpoint (default 1000000)")
    p.add_argument("--patients", type=int, default=100_000,
                   help="patients at the last checkpoint; earlier checkpoints keep the same "
                        "entries/patient ratio (default 100000)")
    p.add_argument("--checkpoints", default=None,
                   help="comma-separated entry counts to measure at (default 1%%,10%%,100%% "
                        "of --entries)")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each phase")
    p.add_argument("--clients", type=int, default=4, help="concurrent client processes "
                   "of the throughput phases (default 4)")
    p.add_argument("--retries", type=int, default=2,
                   help="measure a phase again (up to this many times) when more than "
                        f"{C.FOREIGN_LIMIT:g}%% of the machine's CPU went to processes that are "
                        "neither the benchmark nor the product (default 2)")
    p.add_argument("--quiet-wait", type=float, default=30,
                   help="before each phase, wait up to this many seconds for the machine to be "
                        "idle (below 10%% busy for 2 s) (default 30)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default: the "
                   "product default, 2)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker (default: the "
                   "product default, 4)")
    p.add_argument("--shared-buffers", default="1GB")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the server, e.g. OPENDMP_AUDIT_REPOSITORIES=none "
                        "(repeatable)")
    p.add_argument("--batch", type=int, default=20_000, help="submissions per COPY transaction")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--profile", metavar="DIR",
                   help="record py-spy profiles of the gunicorn workers during the throughput "
                        "phases of the last checkpoint into DIR (needs py-spy; see "
                        "benchmarks/profile.py)")
    p.add_argument("--keep", action="store_true",
                   help="leave PostgreSQL running with the data at the end (prints how to "
                        "connect and stop it)")
    a = p.parse_args(argv)
    if a.checkpoints:
        a.checkpoints = sorted(int(x.replace("_", "")) for x in a.checkpoints.split(","))
    else:
        a.checkpoints = sorted({max(1, a.entries // 100), max(1, a.entries // 10), a.entries})
    if a.checkpoints[-1] != a.entries:
        a.entries = a.checkpoints[-1]
    if a.patients > a.entries:
        p.error("--patients must not exceed --entries")
    if a.profile and P.py_spy() is None:
        p.error("--profile needs py-spy on PATH or PY_SPY=/path/to/py-spy")
    return a


# ----------------------------------------------------------------- facts


def machine_facts() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(l for l in f if l.startswith("MemTotal")).split()[1]) // 1024 // 1024
    except (OSError, StopIteration):
        pass
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=benchmarks.ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "ram_gb": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "revision": rev or "unknown"}


def pool_facts(url: str) -> str:
    engine = make_engine(url)
    try:
        return f"{engine.pool.size()}+{engine.pool._max_overflow}"  # noqa: SLF001
    finally:
        engine.dispose()


def db_counts(url: str) -> tuple[int, int]:
    import psycopg

    from .dataset import conninfo
    with psycopg.connect(conninfo(url)) as conn:
        entries = conn.execute("SELECT count(*) FROM registry_object WHERE kind IN (1, 2)"
                               ).fetchone()[0]
        patients = conn.execute("SELECT count(*) FROM patient").fetchone()[0]
    return entries, patients


# ----------------------------------------------------------------- formatting


def ms(x: float) -> str:
    if x != x:  # nan
        return "–"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def mark(r: C.PhaseResult) -> str:
    """† on a measurement that other processes disturbed even after the retries."""
    return " †" if r.disturbed else ""


def pp(r: C.PhaseResult) -> str:
    return f"{ms(r.pct(0.50))} / {ms(r.pct(0.99))}{mark(r)}"


def rate(r: C.PhaseResult) -> str:
    return f"{r.rate:,.0f}{mark(r)}"


def main_table(rows: list[dict], clients: int) -> str:
    out = [
        f"| entries | patients | ITI-42 reg/s ({clients} cl.) | ITI-42 p50/p99 ms (1 cl.) "
        f"| FindDocuments p50/p99 ms (1 cl.) | FindDocuments q/s ({clients} cl.) "
        f"| GetDocuments p50/p99 ms (1 cl.) | GetDocuments q/s ({clients} cl.) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, t = r["single"], r["multi"]
        out.append(
            f"| {r['entries']:,} | {r['patients']:,} | {rate(t['ITI-42'])} "
            f"| {pp(s['ITI-42'])} | {pp(s['FindDocuments'])} | {rate(t['FindDocuments'])} "
            f"| {pp(s['GetDocuments'])} | {rate(t['GetDocuments'])} |")
    return "\n".join(out)


def detail_table(rows: list[dict]) -> str:
    out = [
        "| entries | phase | clients | req/s | p50 ms | p90 ms | p99 ms | max ms | errors "
        "| results/answer | CPU % clients | CPU % server (per worker) | CPU % postgres "
        "| CPU % foreign | CPU % machine | CPU ms/req server / postgres / client "
        "| discarded runs (req/s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for mode in ("single", "multi"):
            for name in ("ITI-42", "FindDocuments", "GetDocuments"):
                x = r[mode][name]
                res = f"{x.mean_results:.1f}" if name != "ITI-42" else "–"
                out.append(
                    f"| {r['entries']:,} | {name} | {x.clients} | {x.rate:,.0f} "
                    f"| {ms(x.pct(.5))} | {ms(x.pct(.9))} | {ms(x.pct(.99))} "
                    f"| {ms(x.pct(1.0))} | {x.errors} | {res} "
                    f"| {x.cpu['clients']:.0f} | {x.cpu['server']:.0f} "
                    f"({'/'.join(str(v) for v in x.cpu['server_split'] if v)}) "
                    f"| {x.cpu['postgres']:.0f} | {x.cpu['foreign']:.0f}{mark(x)} "
                    f"| {x.cpu['machine']:.0f} "
                    f"| {x.cpu_ms_per_request('server'):.2f} / "
                    f"{x.cpu_ms_per_request('postgres'):.2f} / "
                    f"{x.cpu_ms_per_request('clients'):.2f} "
                    f"| {', '.join(f'{d:,.0f}' for d in x.discarded) or '–'} |")
    return "\n".join(out)


def load_table(rows: list[dict]) -> str:
    out = [
        "| checkpoint | + submissions | + patients | + rows (objects / keys) | MB sent "
        "| COPY s | submissions/s | of which Python encode s | VACUUM ANALYZE s "
        "| CHECKPOINT + sync s | docs/patient median / p90 / p99 / max | DB size MB "
        "| bytes/entry |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        st, sz = r["load"], r["sizes"]
        d = st.docs_per_patient
        dist = (f"{d[len(d) // 2]} / {d[int(len(d) * .9)]} / {d[int(len(d) * .99)]} / {d[-1]}"
                if d else "–")
        total = sum(sz.values())
        out.append(
            f"| {r['checkpoint']:,} | {st.submissions:,} | {st.patients:,} "
            f"| {st.ro_rows:,} / {st.key_rows:,} | {st.bytes / 1e6:,.0f} | {st.copy_s:.1f} "
            f"| {st.submissions / st.copy_s if st.copy_s else 0:,.0f} | {st.encode_s:.1f} "
            f"| {st.vacuum_s:.1f} | {st.quiesce_s:.1f} | {dist} | {total / 2**20:,.0f} "
            f"| {total / max(1, r['entries']):,.0f} |")
    return "\n".join(out)


def plan_summary(plan: list[str]) -> str:
    keep = [l for l in plan if "Scan" in l or "Index Cond" in l or "Execution Time" in l
            or "Filter" in l]
    return "\n".join(keep)


# ----------------------------------------------------------------- run


def measure(a, wl, clients: int, server, cluster, phase_no: int) -> C.PhaseResult:
    """One phase; measured again (``--retries``) while other processes disturb it."""
    discarded: list[float] = []
    for attempt in range(a.retries + 1):
        busy = C.wait_quiet(timeout=a.quiet_wait)
        if busy > C.FOREIGN_LIMIT:
            log(f"  machine still {busy:.0f}% busy before {wl.name}; measuring anyway")
        r = C.run_phase(wl, clients, a.seconds, a.warmup, server.proc.pid,
                        cluster.postmaster_pid, seed=a.seed * 100_000 + phase_no * 10 + attempt)
        if not r.disturbed or attempt == a.retries:
            r.discarded = discarded
            return r
        log(f"  {wl.name} {clients} client(s): {r.cpu['foreign']:.0f}% of the machine went to "
            f"other processes {r.cpu['others_top']}; measuring again")
        discarded.append(r.rate)
    raise AssertionError("unreachable")


def quiesce(url: str) -> float:
    """CHECKPOINT and sync after a load, then wait for the machine to calm down, so that
    the write-back of the load does not land in the measurements. Returns seconds."""
    import psycopg

    from .dataset import conninfo
    t = time.perf_counter()
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()
    C.wait_quiet(timeout=120)
    return time.perf_counter() - t



def run(a: argparse.Namespace) -> int:
    machine = machine_facts()
    started = dt.datetime.now().astimezone()
    log(f"machine: {machine}")
    cluster = BenchCluster({"shared_buffers": a.shared_buffers})
    server = None
    rows: list[dict] = []
    explains: dict = {}
    try:
        cluster.start()
        url = cluster.create_database("opendmp_bench")
        migrate(url)
        pg = server_facts(url)
        log(f"postgres {pg} in {cluster.data_dir}")
        log("building templates (ITI-42 code path in SQLite)")
        ds = Dataset(url, seed=a.seed, batch=a.batch)
        server = ServerProcess(url, env={"OPENDMP_WORKERS": a.workers,
                                         "OPENDMP_THREADS": a.threads,
                                         **dict(kv.split("=", 1) for kv in a.server_env)})
        server.start()
        pool = pool_facts(url)
        log(f"server {server.base_url} (gunicorn gthread {a.workers} workers x {a.threads} "
            f"threads, SQLAlchemy pool {pool} per worker), log {server.log_path}")
        endpoint = server.url("/xds/registry")
        rng = random.Random(a.seed)
        phase_no = 0
        for cp in a.checkpoints:
            want_patients = max(1, round(cp * a.patients / a.entries))
            new_p = want_patients - len(ds.patients_cx)
            new_e = cp - ds.submissions
            log(f"checkpoint {cp:,}: loading {new_e:,} submissions for {new_p:,} new patients")
            t = time.perf_counter()
            st = ds.load(new_p, new_e, log=lambda m: log(m))
            log(f"  loaded in {time.perf_counter() - t:.1f} s (COPY {st.copy_s:.1f} s, "
                f"VACUUM ANALYZE {st.vacuum_s:.1f} s; {st.checked} read back, rows "
                f"re-derived by store.object_row every {ds.check_every:,} submissions)")
            st.quiesce_s = quiesce(url)
            log(f"  CHECKPOINT + sync + idle wait {st.quiesce_s:.1f} s")
            entries, patients = db_counts(url)
            sz = sizes(url)
            fd = explain_find_documents(url, ds.patients_cx[rng.randrange(len(ds.patients_cx))])
            gd = explain_get_documents(url, ds.values.document_uuid(rng.randrange(ds.submissions)))
            explains[cp] = {"find": fd, "get": gd}
            log(f"  FindDocuments uses ix_ro_patient: {fd['uses_index']}\n"
                + plan_summary(fd["custom"]))
            workloads = [
                C.register(endpoint, ds.patients_cx, ds.root + ".9"),
                C.find_documents(endpoint, ds.patients_cx),
                C.get_documents(endpoint, ds.values.document_uuid, ds.submissions),
            ]
            row = {"checkpoint": cp, "entries": entries, "patients": patients, "load": st,
                   "sizes": sz, "single": {}, "multi": {}}
            for mode, n in (("single", 1), ("multi", a.clients)):
                for wl in workloads:
                    phase_no += 1
                    spies = None
                    if a.profile and mode == "multi" and cp == a.checkpoints[-1]:
                        spies = P.start(server.proc.pid, Path(a.profile), wl.name,
                                        a.seconds + a.warmup + 0.5)
                    r = measure(a, wl, n, server, cluster, phase_no)
                    row[mode][wl.name] = r
                    if spies is not None:
                        log(f"  py-spy profile of {wl.name}:\n" + P.finish(
                            spies, Path(a.profile) / f"{wl.name}-summary.txt"))
                    log(f"  {wl.name:13} {n} client(s): {r.rate:7,.0f}/s  p50 {ms(r.pct(.5))} "
                        f"p99 {ms(r.pct(.99))} ms  errors {r.errors}  CPU% cl {r.cpu['clients']:.0f}"
                        f" srv {r.cpu['server']:.0f} {r.cpu['server_split']} "
                        f"pg {r.cpu['postgres']:.0f} foreign {r.cpu['foreign']:.0f} "
                        f"{r.cpu['others_top']} all {r.cpu['machine']:.0f}"
                        + f"  CPU ms/req srv {r.cpu_ms_per_request('server'):.2f} "
                        f"pg {r.cpu_ms_per_request('postgres'):.2f}"
                        + (f"\n    first error: {r.error_sample}" if r.errors else ""))
            rows.append(row)
        finished = dt.datetime.now().astimezone()
        report = render(a, machine, pg, pool, rows, explains, started, finished)
        print(report)
        if a.json:
            dump_json(a.json, a, machine, pg, pool, rows, explains, started, finished)
    finally:
        if server is not None:
            server.stop()
        if a.keep and cluster.data_dir:
            atexit.unregister(cluster.stop)
            log(f"--keep: PostgreSQL left running: psql -h 127.0.0.1 -p {cluster.port} -U postgres "
                f"opendmp_bench; stop with: runuser -u postgres -- pg_ctl -D {cluster.data_dir} "
                f"stop && rm -rf {cluster.base_dir}")
        else:
            cluster.stop()
    return 0


def render(a, machine, pg, pool, rows, explains, started, finished) -> str:
    last = explains[max(explains)]
    fd = last["find"]
    out = [
        f"## OpenDMP registry benchmark — {started:%Y-%m-%d %H:%M %Z} "
        f"({(finished - started).total_seconds() / 60:.0f} min)",
        "",
        f"Product: git {machine['revision']}. "
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gb']} GB RAM, "
        f"Linux {machine['kernel']}, Python {machine['python']}. "
        f"PostgreSQL {pg['version']}: shared_buffers={pg['shared_buffers']}, "
        f"fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']} (every ITI-42 "
        f"commit waits for its WAL flush), full_page_writes={pg['full_page_writes']}, "
        f"TOAST {pg['default_toast_compression']}, loopback TCP. "
        f"Server: gunicorn gthread, {a.workers} workers x {a.threads} threads, "
        f"SQLAlchemy pool {pool} per worker, access log on"
        + (f", {' '.join(a.server_env)}" if a.server_env else ", product defaults (ATNA "
           "auditing of every transaction on)") + ". "
        f"Load generator: {a.clients} client processes (throughput) or 1 (latency), closed "
        f"loop, httpx keep-alive, on the same machine (its CPU share is in the detail table). "
        f"Warm cache: the dataset fits in RAM. {a.seconds:g} s measured per phase after "
        f"{a.warmup:g} s warm-up; a phase during which more than {C.FOREIGN_LIMIT:g}% of the "
        f"machine went to other processes is measured again (up to {a.retries} times), "
        "still-disturbed results are marked †.",
        "",
        "Targets (issue): FindDocuments p99 < 10 ms, >= 300 registrations/s, latency flat "
        "from 10k to 1M entries.",
        "",
        main_table(rows, a.clients),
        "",
        "### Every phase (1 client = latency run, "
        f"{a.clients} clients = throughput run)",
        "",
        detail_table(rows),
        "",
        "### Loading (binary COPY of rows made by the ITI-42 code path; see benchmarks/dataset.py)",
        "",
        load_table(rows),
        "",
        f"Total load: {sum(r['load'].copy_s + r['load'].vacuum_s for r in rows):.0f} s "
        f"(COPY {sum(r['load'].copy_s for r in rows):.0f} s + VACUUM ANALYZE "
        f"{sum(r['load'].vacuum_s for r in rows):.0f} s).",
        "",
        f"### FindDocuments plan at {max(explains):,} entries "
        f"(ix_ro_patient used at every checkpoint: "
        f"{all(e['find']['uses_index'] for e in explains.values())})",
        "",
        "```sql",
        fd["sql"].strip(),
        "```",
        "",
        "custom plan (first executions):",
        "```",
        *fd["custom"],
        "```",
        "generic plan (prepared statement, plan_cache_mode=force_generic_plan):",
        "```",
        *fd["generic"],
        "```",
        "GetDocuments (by entryUUID):",
        "```",
        plan_summary(last["get"]["custom"]),
        "```",
    ]
    return "\n".join(out)


def dump_json(path, a, machine, pg, pool, rows, explains, started, finished) -> None:
    def phase(r: C.PhaseResult) -> dict:
        return {"clients": r.clients, "seconds": r.seconds, "count": r.count, "rate": r.rate,
                "p50_ms": r.pct(.5), "p90_ms": r.pct(.9), "p99_ms": r.pct(.99),
                "max_ms": r.pct(1.0), "errors": r.errors, "mean_results": r.mean_results,
                "cpu_percent": r.cpu, "discarded_rates": r.discarded,
                "cpu_ms_per_request": {k: r.cpu_ms_per_request(k)
                                       for k in ("server", "postgres", "clients")}}

    data = {
        "started": started.isoformat(), "finished": finished.isoformat(),
        "args": vars(a), "machine": machine, "postgres": pg, "pool_per_worker": pool,
        "checkpoints": [{
            "checkpoint": r["checkpoint"], "entries": r["entries"], "patients": r["patients"],
            "sizes": r["sizes"],
            "load": {k: v for k, v in vars(r["load"]).items() if k != "docs_per_patient"},
            "single": {k: phase(v) for k, v in r["single"].items()},
            "multi": {k: phase(v) for k, v in r["multi"].items()},
            "find_documents_uses_ix_ro_patient": explains[r["checkpoint"]]["find"]["uses_index"],
        } for r in rows],
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    # Clean up (server, PostgreSQL) on SIGTERM, and on SIGINT even when started in the
    # background (where the shell leaves SIGINT ignored).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
