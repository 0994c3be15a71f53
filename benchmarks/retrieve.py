"""ITI-43 server CPU per retrieve, by process, under a cheap load generator (wrk).

    python -m benchmarks.retrieve [--seconds 10] [--connections 4] [--documents 200]
        [--size "10 KB"] [--rounds 1] [--syscalls] [--profile DIR] [--server-env NAME=VALUE]

Starts the real server (tests/harness ServerProcess: ``opendmp serve``, gunicorn, the
ATNA ARR and sender as shipped) on the repository benchmark's durable PostgreSQL
(benchmarks.pg), stores ``--documents`` documents of the repository benchmark
(``benchmarks.repository.documents``) through ITI-41, then posts ITI-43 requests for
them with ``wrk`` (one thread, ``--connections`` keep-alive connections, the request
bodies built by the product's client code: ``repository.source.retrieve_request`` +
``soapstack.client.build_envelope``; every answer is checked for HTTP 200 and
``ResponseStatusType:Success`` by the Lua script).

Prints, per round, retrieves/s and the CPU milliseconds per retrieve of each process of
the server (gunicorn workers, master, the ARR and its ingest process, the spool sender,
the rest), of PostgreSQL, of wrk, and what other processes used. ``--syscalls`` then
attaches ``strace -c`` to every thread of the workers for a second window and prints
syscalls per retrieve (strace slows the server: only the counts mean something).
``--profile DIR`` records py-spy (``PY_SPY=``) of every server process during the first
round. Asserts nothing about timings. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchmarks  # noqa: F401  (tests/ on sys.path)
from benchmarks import work_dir
from harness import ServerProcess, free_port
from opendmp.db import migrate
from repository.source import ITI43_ACTION, retrieve, retrieve_request
from soapstack.client import SoapClient, build_envelope

from . import client as C
from . import profile as P
from .repository import Iti41Job, documents, log, register_patients
from .rss import http_workers

TICK = os.sysconf("SC_CLK_TCK")

LUA = r"""
local bodies = dofile("%(bodies)s")
local n = #bodies
local i = math.random(n)
local errors, sample = 0, nil
local headers = {["Content-Type"] = 'application/soap+xml; charset=UTF-8; action="%(action)s"'}
request = function()
  i = i %% n + 1
  return wrk.format("POST", "%(path)s", headers, bodies[i])
end
response = function(status, hdrs, body)
  if status ~= 200 or not string.find(body, "ResponseStatusType:Success", 1, true) then
    errors = errors + 1
    if sample == nil then sample = tostring(status) .. " " .. string.sub(body, 1, 400) end
  end
end
done = function(summary, latency, requests)
  io.write(string.format("OK requests=%%d errors=%%d p50=%%d p99=%%d\n", summary.requests,
           errors, latency:percentile(50), latency:percentile(99)))
  if sample then io.write("SAMPLE " .. sample .. "\n") end
end
"""


def lua_bodies(bodies: list[bytes], path: Path) -> None:
    with open(path, "w") as f:
        f.write("return {\n")
        for b in bodies:
            text = b.decode()
            assert "]==]" not in text
            f.write(f"[==[{text}]==],\n")
        f.write("}\n")


def proc_ticks(pid: int) -> int:
    st = C._proc_stat(pid)
    return st[2] if st else 0


def children(pid: int) -> list[int]:
    return P.worker_pids(pid)


def listening_pid(pids: list[int], port: int) -> int | None:
    from .rss import _listening_inodes

    inodes = _listening_inodes(port)
    for pid in pids:
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if any(f"socket:[{i}]" in links for i in inodes):
            return pid
    return None


def roles(server: ServerProcess) -> dict[str, list[int]]:
    """The server's processes by role."""
    master = server.proc.pid
    kids = children(master)
    workers = http_workers(master, server.port)
    rest = [p for p in kids if p not in workers]
    arr = listening_pid(rest, int(server.extra_env["OPENDMP_AUDIT_TLS_PORT"]))
    out = {"workers": workers, "master": [master]}
    if arr is not None:
        out["arr"] = [arr]
        out["arr-ingest"] = children(arr)
        rest.remove(arr)
    out["other (sender, PIX)"] = rest
    return out


def kernel_ticks(pid: int) -> int:
    """stime of a process (its kernel CPU), in ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data[data.rindex(b")") + 2:].split()[12])


def sample(server_roles: dict[str, list[int]], postmaster: int) -> dict[str, int]:
    out = {role: sum(proc_ticks(p) for p in pids) for role, pids in server_roles.items()}
    out["_workers_kernel"] = sum(kernel_ticks(p) for p in server_roles["workers"])
    pg = proc_ticks(postmaster) + sum(proc_ticks(p) for p in children(postmaster))
    out["postgres"] = pg
    busy, total = C._machine_ticks()
    out["_busy"], out["_total"] = busy, total
    return out


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[dict, int, float]:
    proc = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                             "-s", str(script), url], stdout=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    wrk_pid = proc.pid
    out, _ = proc.communicate()
    wall = time.monotonic() - t0
    m = re.search(r"OK requests=(\d+) errors=(\d+) p50=(\d+) p99=(\d+)", out)
    if not m:
        raise RuntimeError(f"wrk said:\n{out}")
    res = {"requests": int(m.group(1)), "errors": int(m.group(2)),
           "p50_ms": int(m.group(3)) / 1000, "p99_ms": int(m.group(4)) / 1000,
           "sample": (re.search(r"SAMPLE (.*)", out) or [None, ""])[1]}
    return res, wrk_pid, wall


def measure(roles_, postmaster, url, script, a) -> dict:
    c0 = os.times()
    s0 = sample(roles_, postmaster)
    res, _, wall = run_wrk(url, script, a.connections, a.seconds)
    s1 = sample(roles_, postmaster)
    c1 = os.times()
    n = max(1, res["requests"])
    ms = {k: (s1[k] - s0[k]) * 1000 / TICK / n for k in s1 if not k.startswith("_")}
    res["workers_kernel_ms"] = (s1["_workers_kernel"] - s0["_workers_kernel"]) * 1000 / TICK / n
    wrk_ms = ((c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)) * 1000 / n
    busy = s1["_busy"] - s0["_busy"]
    total = max(1, s1["_total"] - s0["_total"])
    ours = sum(s1[k] - s0[k] for k in s1 if not k.startswith("_")) + wrk_ms * n * TICK / 1000
    res.update(rate=res["requests"] / wall, ms=ms, wrk_ms=wrk_ms,
               server_ms=sum(v for k, v in ms.items() if k != "postgres"),
               machine=100 * busy / total, foreign=max(0.0, 100 * (busy - ours) / total))
    return res


def strace_counts(pids: list[int], url: str, script: Path, a) -> str:
    tids = [t for p in pids for t in os.listdir(f"/proc/{p}/task")]
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt")[1])
    argv = ["strace", "-c", "-o", str(out)] + [x for t in tids for x in ("-p", t)]
    st = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    res, _, _ = run_wrk(url, script, a.connections, min(a.seconds, 5))
    st.send_signal(signal.SIGINT)
    st.wait(30)
    text = out.read_text()
    out.unlink()
    n = max(1, res["requests"])
    lines = [f"syscalls per retrieve in the workers (strace -c, {n} retrieves):"]
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls = int(f[3])
            lines.append(f"  {f[-1]:22} {calls / n:7.2f}")
        elif f and f[-1] == "total":
            lines.append(f"  {'total':22} {int(f[3]) / n:7.2f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--documents", type=int, default=200)
    p.add_argument("--size", default="10 KB", help="10 KB, 140 KB or 5 MB")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--syscalls", action="store_true")
    p.add_argument("--profile", metavar="DIR")
    p.add_argument("--compare", metavar="TREE",
                   help="also run a server on the code of another source tree (e.g. a "
                        "`git archive` of the base commit) and measure both in alternating "
                        "rounds")
    p.add_argument("--compare-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the compared server only (with or without --compare: "
                        "then this checkout with and without the setting)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    a.server_env = dict(x.split("=", 1) for x in a.server_env)
    a.compare_env = dict(x.split("=", 1) for x in a.compare_env)
    return a


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


@dataclass
class Target:
    """One server under test: this checkout's code, or another tree (``--compare``)."""

    label: str
    server: ServerProcess
    endpoint: str
    script: Path
    roles: dict[str, list[int]]


def start_target(label: str, code: str | None, url: str, patients: list[str], a,
                 tmp: Path, extra_env: dict | None = None) -> Target:
    """Start a server running ``code`` (a source tree; None: this checkout), store the
    documents through its ITI-41 and write the wrk script of their ITI-43 requests."""
    home = Path(work_dir("opendmp-bench-retrieve-"))
    env = {"OPENDMP_WORKERS": a.workers, "OPENDMP_THREADS": a.threads,
           "OPENDMP_MLLP_PORT": free_port(), **a.server_env, **(extra_env or {})}
    if code is not None:
        env["PYTHONPATH"] = str(Path(code).resolve())
    server = ServerProcess(url, home=home, env=env, startup_timeout=60)
    server.start()
    endpoint = server.url("/xds/repository")
    repo_uid = (home / "repository-unique-id").read_text().strip()
    doc = next(d for d in documents(a.seed) if d.label == a.size)
    job = Iti41Job(endpoint, patients, doc, f"1.2.250.1.999.{random.randrange(10**6)}")
    soap = job.connect()
    rng = random.Random(a.seed)
    uids = []
    for i in range(a.documents):
        uid, prepared = job.prepare(rng, 0, i)
        err, _ = job.send(soap, prepared)
        if err:
            raise RuntimeError(f"ITI-41 failed: {err}")
        uids.append(uid)
    soap.close()
    check = SoapClient(endpoint)
    _, got = retrieve(check, repo_uid, [uids[0]])
    check.close()
    if len(got) != 1 or abs(len(got[0].content) - doc.size) > 64:
        raise RuntimeError(f"ITI-43 of {uids[0]} did not return the document")
    bodies = [build_envelope(ITI43_ACTION, endpoint, retrieve_request(repo_uid, [u]))
              for u in uids]
    lua_bodies(bodies, tmp / f"bodies-{label}.lua")
    script = tmp / f"iti43-{label}.lua"
    script.write_text(LUA % {"bodies": tmp / f"bodies-{label}.lua", "action": ITI43_ACTION,
                             "path": "/xds/repository"})
    log(f"{label}: {len(uids)} documents of {doc.size:,} bytes stored; server "
        f"{server.base_url}, code {code or benchmarks.ROOT}")
    return Target(label, server, endpoint, script, roles(server))


def report(label: str, k: int, res: dict) -> None:
    load = os.getloadavg()
    print(f"{label} round {k + 1}: {res['rate']:,.0f} retrieves/s, p50 {res['p50_ms']:.2f} ms "
          f"p99 {res['p99_ms']:.2f} ms, errors {res['errors']} {res['sample'][:200]}")
    print(f"  CPU ms per retrieve: server {res['server_ms']:.3f} = " + ", ".join(
        f"{k_} {v:.3f}" for k_, v in res["ms"].items() if k_ != "postgres")
        + f"; postgres {res['ms']['postgres']:.3f}; wrk {res['wrk_ms']:.3f} "
        f"(workers in the kernel: {res['workers_kernel_ms']:.3f})")
    print(f"  machine {res['machine']:.0f} % busy, other processes {res['foreign']:.0f} %,"
          f" load average {load[0]:.2f} {load[1]:.2f}", flush=True)


def run(a) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks.retrieve needs wrk (apt-get install wrk)")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    from .pg import BenchCluster

    tmp = Path(tempfile.mkdtemp(prefix="retrieve-wrk-"))
    cluster = None
    targets: list[Target] = []
    try:
        cluster = BenchCluster()
        cluster.start()
        url = cluster.create_database("opendmp_bench_retrieve")
        migrate(url)
        patients = [cx for cx, _ in register_patients(url, 50, a.seed)]
        targets.append(start_target("this", None, url, patients, a, tmp))
        if a.compare or a.compare_env:
            targets.append(start_target("compared", a.compare, url, patients, a, tmp,
                                        a.compare_env))
        for t in targets:
            log(f"{t.label} processes: {t.roles}")
            run_wrk(t.endpoint, t.script, a.connections, 2)  # warm-up
        results: dict[str, list[dict]] = {t.label: [] for t in targets}
        for k in range(a.rounds):
            for t in targets:  # alternate: the same machine state for both
                C.wait_quiet(limit=15.0, calm=0.5, timeout=60)
                spies = None
                if a.profile and k == 0:
                    spies = start_spies([p for ps in t.roles.values() for p in ps],
                                        Path(a.profile) / t.label, a.seconds + 0.5)
                res = measure(t.roles, cluster.postmaster_pid, t.endpoint, t.script, a)
                if spies is not None:
                    finish_spies(spies, t.roles, Path(a.profile) / t.label)
                results[t.label].append(res)
                report(t.label, k, res)
        if a.rounds > 1:
            print("\nmedians over the rounds (CPU ms per retrieve):")
            for label, rs in results.items():
                med = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
                print(f"  {label:9} server {med(lambda r: r['server_ms']):.3f} (workers "
                      f"{med(lambda r: r['ms']['workers']):.3f}, ARR "
                      f"{med(lambda r: r['ms'].get('arr', 0) + r['ms'].get('arr-ingest', 0)):.3f})"
                      f", postgres {med(lambda r: r['ms']['postgres']):.3f}, "
                      f"{med(lambda r: r['rate']):,.0f} retrieves/s")
        if a.syscalls:
            for t in targets:
                print(f"{t.label}: " + strace_counts(t.roles["workers"], t.endpoint, t.script, a))
    finally:
        for t in targets:
            t.server.stop()
            shutil.rmtree(t.server.home, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def finish_spies(spies, roles_: dict[str, list[int]], out_dir: Path) -> None:
    for proc_, _ in spies:
        try:
            proc_.wait(60)
        except subprocess.TimeoutExpired:
            proc_.kill()
    for role, pids in roles_.items():
        files = [out for _, out in spies if int(out.stem.rsplit("-", 1)[1]) in pids]
        text = P.summarize(files, top=45)
        (out_dir / f"{role.split()[0]}-summary.txt").write_text(text + "\n")
        log(f"py-spy {role}: {out_dir / (role.split()[0] + '-summary.txt')}")


def start_spies(pids: list[int], out_dir: Path, seconds: float):
    exe = P.py_spy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy (set PY_SPY=/path/to/py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in pids:
        out = out_dir / f"iti43-{pid}"
        p = subprocess.Popen([exe, "record", "--pid", str(pid), "--duration",
                              str(int(seconds) + 1), "--rate", "200", "--format", "raw",
                              "--nonblocking", "--gil", "--output", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((p, out))
    return procs


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
