"""ATNA benchmark: audit messages/s ingested (with storage) over one TLS connection and
over UDP, and what an ITI-18 request pays for emitting its audit message.

    PYTHONPATH=.:tests python -m benchmarks.atna [--db pg|sqlite] [--messages 40000]
        [--tls-runs 2] [--udp-rates 2000,5000,10000] [--seconds 6] [--rounds 2]
        [--patients 200] [--phases tls,udp,iti18] [--keep]
    PYTHONPATH=.:tests python -m benchmarks.atna --breakdown   # CPU per step, in process

Starts the real server (tests/harness ServerProcess: ``opendmp serve`` with its ARR —
receiver process + ingest process — and spool sender) on a throwaway durable PostgreSQL
(benchmarks.pg.BenchCluster: fsync, synchronous_commit on) or SQLite, then:

1. TLS ingest: one mutual-TLS connection sends ``--messages`` octet-counted RFC 5424
   frames, each an ITI-18 audit message as our registry emits it (2.8 KB with its base64
   query); the rate is messages / time until the ARR's counters say all are stored
   (parsed, schema-validated, indexed, committed). CPU µs per message of the receiver,
   the ingest process, PostgreSQL, this client and the rest of the machine (/proc).
2. UDP ingest: datagrams paced at each of ``--udp-rates`` for 3 s; stored/s and loss.
3. ITI-18 cost: FindDocuments latency with one client, closed loop, alternating
   ``--rounds`` times: auditing off; emitted to a UDP sink nobody reads; emitted to a TLS
   sink in another process that reads and discards (both: an ARR elsewhere, the cost of
   emitting); emitted to our own ARR storing on the same machine (the default). Server
   CPU per request split into gunicorn, sender and ARR. Plus the in-process CPU the
   audit wrapper adds (emission_cost).

Prints markdown tables with the load average beside them; asserts nothing about timings
(targets: >= 8,000 messages/s over TLS, < 5 % added to an ITI-18). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import socket
import ssl
import sys
import time
from pathlib import Path

import benchmarks  # noqa: F401  (tests/ on sys.path)
from benchmarks import work_dir
import factory as F
import xds
from harness import ServerProcess
from harness.postgres import free_port

from atna import events as ev
from atna import pki
from atna.syslog import format_rfc5424, octet_frame

from . import client as C
from .pg import BenchCluster


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def audit_message(i: int) -> bytes:
    patient = F.new_ins(random.Random(i))
    query = xds.adhoc_query(xds.FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": f"'{patient}'",
        "$XDSDocumentEntryStatus": f"('{xds.APPROVED}')"})
    from lxml import etree
    x = ev.Exchange("http://www.w3.org/2005/08/addressing/anonymous", "10.0.0.7",
                    "commonName=bench,organizationName=OpenDMP",
                    "http://opendmp.example:8080/xds/registry", "opendmp.example")
    return ev.build(ev.iti18_registry(x, 0, etree.tostring(query), xds.FIND_DOCUMENTS, patient))


def stats(home: Path) -> dict:
    try:
        return json.loads((home / "atna" / "arr-stats.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def wait_stored(home: Path, target: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while stats(home).get("stored", 0) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"stored {stats(home).get('stored')} < {target}")
        time.sleep(0.02)
    return time.monotonic()


class CpuWatch:
    """CPU seconds (utime + stime from /proc) of the processes that matter for the ARR —
    its receiver (event loop: TLS, framing, RFC 5424 header), its ingest process (XML,
    index, store), PostgreSQL (postmaster and backends) — this benchmark's client, and the
    rest of the machine (other sessions, the kernel's softirqs) over a measured window."""

    def __init__(self, srv: ServerProcess, pg_pid: int | None) -> None:
        st = stats(srv.home)
        self.pids = {"receiver": st.get("pid"), "ingest": st.get("ingest_pid")}
        self.pg_pid = pg_pid

    def _sample(self) -> dict:
        out = {name: (C._proc_stat(pid) or (0, 0, 0))[2] if pid else 0
               for name, pid in self.pids.items()}
        pg = 0
        if self.pg_pid:
            for name in os.listdir("/proc"):
                if name.isdigit():
                    st = C._proc_stat(int(name))
                    if st and (int(name) == self.pg_pid or st[0] == self.pg_pid):
                        pg += st[2]
        out["postgres"] = pg
        t = os.times()
        out["client"] = (t.user + t.system) * C._TICK
        out["machine"], out["total"] = C._machine_ticks()
        return out

    def __enter__(self) -> "CpuWatch":
        self.before = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        after = self._sample()
        d = {k: (after[k] - self.before[k]) / C._TICK for k in after}
        # d["machine"]: busy CPU-seconds of all CPUs (/proc/stat's first line sums them)
        d["others"] = max(0.0, d["machine"] - d["receiver"] - d["ingest"] - d["postgres"] - d["client"])
        self.seconds = d


def tls_ingest(srv: ServerProcess, pki_dir: Path, n: int, pg_pid: int | None = None) -> dict:
    port = int(srv.extra_env["OPENDMP_AUDIT_TLS_PORT"])
    frames = [octet_frame(format_rfc5424(audit_message(i % 1000), hostname="bench"))
              for i in range(min(n, 1000))]
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    ctx.load_cert_chain(str(pki_dir / "bench.pem"), str(pki_dir / "bench.key"))
    base = stats(srv.home).get("stored", 0)
    load = os.getloadavg()[0]
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s, CpuWatch(srv, pg_pid) as cpu:
        t0 = time.monotonic()
        sent = 0
        while sent < n:
            chunk = frames[: min(len(frames), n - sent)]
            s.sendall(b"".join(chunk))
            sent += len(chunk)
        t_sent = time.monotonic()
        t1 = wait_stored(srv.home, base + n)
        s.unwrap()
    size = len(frames[0])
    us = {k: v / n * 1e6 for k, v in cpu.seconds.items()}
    return {"messages": n, "bytes": size, "send_s": t_sent - t0, "seconds": t1 - t0,
            "rate": n / (t1 - t0), "mb_s": n * size / (t1 - t0) / 1e6, "cpu_us": us,
            "load": load, "load_after": os.getloadavg()[0]}


def udp_ingest(srv: ServerProcess, rate: int, seconds: float = 3.0) -> dict:
    port = int(srv.extra_env["OPENDMP_AUDIT_UDP_PORT"])
    msg = format_rfc5424(audit_message(1), hostname="bench")
    base = stats(srv.home)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        t0 = time.monotonic()
        while True:
            now = time.monotonic() - t0
            if now >= seconds:
                break
            due = int(now * rate)
            while sent < due:
                s.sendto(msg, ("127.0.0.1", port))
                sent += 1
            time.sleep(0.001)
    last, still = -1, 0.0
    while still < 1.0:  # until the ARR has stored everything it received
        time.sleep(0.2)
        now_stored = stats(srv.home).get("stored", 0)
        still = still + 0.2 if now_stored == last else 0.0
        last = now_stored
    after = stats(srv.home)
    stored = after.get("stored", 0) - base.get("stored", 0)
    received = after.get("received", 0) - base.get("received", 0)
    return {"rate": rate, "sent": sent, "received": received, "stored": stored,
            "loss": 1 - stored / sent if sent else 0.0, "load": os.getloadavg()[0]}


def _group_ticks(pgid: int) -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = C._proc_stat(int(name))
            if st and st[1] == pgid:
                out[int(name)] = st[2]
    return out


def iti18_latency(srv: ServerProcess, patients: list[str], seconds: float, pg_pid) -> C.PhaseResult:
    """One client, closed loop; ``result.split`` is the share of the server's CPU taken by
    its gunicorn processes, the spool sender and the ARR (receiver + ingest process)."""
    wl = C.find_documents(srv.url("/xds/registry"), patients)
    before = _group_ticks(srv.proc.pid)
    result = C.run_phase(wl, 1, seconds, 2.0, srv.proc.pid, pg_pid, seed=7)
    after = _group_ticks(srv.proc.pid)
    arr = stats(srv.home)
    try:
        sender = json.loads((srv.home / "atna" / "sender-stats.json").read_text()).get("pid")
    except (FileNotFoundError, ValueError):
        sender = None
    label = {arr.get("pid"): "arr", arr.get("ingest_pid"): "arr", sender: "sender"}
    ticks: dict[str, int] = {"gunicorn": 0, "sender": 0, "arr": 0}
    for pid, t in after.items():
        ticks[label.get(pid, "gunicorn")] += t - before.get(pid, 0)
    total = sum(ticks.values()) or 1
    result.split = {k: v / total for k, v in ticks.items()}
    return result


def emission_cost(n: int = 1500, interval: float = 0.002) -> dict:
    """CPU µs that auditing adds to one ITI-18 handler call, in process (no HTTP, no
    database): the audit wrapper around a handler returning a 20 KB AdhocQueryResponse,
    with the product's Auditor (facts handed over in the request thread; XML built and
    group-committed to a real spool with fdatasync by the background thread). Calls come
    one at a time every ``interval`` s, as from one client, so group commits are as small
    as they are in the latency runs. Returns the process CPU per call (all threads) with
    and without the wrapper, the request thread's own CPU, and the wall time of the
    wrapped call (what the client waits for)."""
    from lxml import etree

    from atna.auditor import Auditor, AuditSettings
    from atna.hooks import ITI18, audit_endpoint
    from soapstack.envelope import SoapRequest, SoapResponse
    from soapstack.wsgi import Operation, SoapEndpoint

    home = Path(work_dir("opendmp-bench-atna-inproc-"))
    auditor = Auditor(AuditSettings.from_env({"OPENDMP_AUDIT_REPOSITORIES": "udp://127.0.0.1:9"}), home)
    req = xds.adhoc_query(xds.FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": f"'{F.new_ins()}'",
                                               "$XDSDocumentEntryStatus": f"('{xds.APPROVED}')"})
    answer = (b'<query:AdhocQueryResponse status="urn:oasis:names:tc:ebxml-regrep:'
              b'ResponseStatusType:Success">' + b" " * 20000 + b"</query:AdhocQueryResponse>")
    request = SoapRequest(envelope=etree.Element("E"), header=None, body=etree.Element("B"),
                          action=ITI18, message_id="m", to="http://h/xds/registry",
                          remote_addr="127.0.0.1")
    request.body.append(req)
    plain = lambda r: SoapResponse("a", answer)  # noqa: E731
    wrapped = audit_endpoint(SoapEndpoint("/xds/registry", [Operation(ITI18, "x", plain)]),
                             auditor).operations[0].handler
    out = {}
    for label, handler in (("plain", plain), ("audited", wrapped)) * 2:
        handler(request)
        auditor.flush(30)
        cpu0, thread, wall = time.process_time(), 0.0, 0.0
        for _ in range(n):
            t0, w0 = time.thread_time(), time.perf_counter()
            handler(request)
            thread += time.thread_time() - t0
            wall += time.perf_counter() - w0
            time.sleep(interval)
        auditor.flush(30)
        # the sleeps' own CPU (timer wake-ups) is in both, and cancels out in the difference
        out.setdefault(label, []).append(((time.process_time() - cpu0) / n * 1e6,
                                          thread / n * 1e6, wall / n * 1e6))
    shutil.rmtree(home, ignore_errors=True)
    best = {k: min(v) for k, v in out.items()}  # the less disturbed of the two rounds
    return {"process_plain": best["plain"][0], "process_audited": best["audited"][0],
            "thread_plain": best["plain"][1], "thread_audited": best["audited"][1],
            "wall_plain": best["plain"][2], "wall_audited": best["audited"][2]}


def ingest_breakdown(n: int = 3000, pg: bool = True) -> list[tuple[str, str]]:
    """CPU µs per message (``time.process_time``) of each step of the ARR's ingest path,
    in process: the receiver's steps, the hand-over, then the ingest process's steps,
    storing into a throwaway SQLite database and (``pg``) a throwaway durable PostgreSQL,
    whose backend CPU is read from /proc (``--breakdown``)."""
    import pickle

    from atna.message import read_index, schema_errors
    from atna.store import Received, _keys, _row, store_batch
    from atna.syslog import StreamFramer, parse_rfc5424
    from opendmp.db import make_engine, migrate
    from soapstack.xml import parse_xml

    data = b"".join(octet_frame(format_rfc5424(audit_message(i % 300), hostname="bench"))
                    for i in range(n))
    out = []

    def step(label, fn, where="receiver"):
        t0 = time.process_time()
        result = fn()
        out.append((where, label, f"{(time.process_time() - t0) / n * 1e6:.1f}"))
        return result

    frames = step("RFC 5425 framing", lambda: list(StreamFramer(1 << 20).feed(data)))
    msgs = step("RFC 5424 header", lambda: [parse_rfc5424(f.data).msg for f in frames])
    items = [("tls", "CN=bench", None, None, m) for m in msgs]
    blobs = step("hand-over: pickle 500-message batches",
                 lambda: [pickle.dumps(("batch", 1, items[i:i + 500]), pickle.HIGHEST_PROTOCOL)
                          for i in range(0, n, 500)])
    step("hand-over: unpickle", lambda: [pickle.loads(b) for b in blobs], "ingest")
    roots = step("XML parse (soapstack.xml.parse_xml)", lambda: [parse_xml(m) for m in msgs], "ingest")
    schema_errors(roots[0])  # load the schema outside the measure
    step("DICOM XSD validation", lambda: [schema_errors(r) for r in roots], "ingest")
    indexes = step("read_index (parse + validation + indexed fields)",
                   lambda: [read_index(m) for m in msgs], "ingest")
    step("search keys + row", lambda: [(_keys(r), _row(Received(r, "tls"))) for r in indexes],
         "ingest")
    received = [Received(r, "tls", "bench", None, None, 1) for r in indexes]
    work = Path(work_dir("opendmp-bench-atna-store-"))
    url = f"sqlite:///{work / 'a.sqlite3'}"
    migrate(url)
    engine = make_engine(url)
    step("store_batch, SQLite, 500 per transaction",
         lambda: [store_batch(engine, received[i:i + 500]) for i in range(0, n, 500)], "ingest")
    engine.dispose()
    if pg:
        cluster = BenchCluster()
        cluster.start()
        try:
            url = cluster.create_database("atna_breakdown")
            migrate(url)
            engine = make_engine(url)
            with engine.connect() as conn:
                backend = conn.connection.driver_connection.info.backend_pid
            store_batch(engine, received[:500])  # warm the connection and the catalog
            b0 = C._proc_stat(backend)[2]
            step("store_batch, PostgreSQL COPY, 500 per transaction (client side)",
                 lambda: [store_batch(engine, received[i:i + 500]) for i in range(0, n, 500)],
                 "ingest")
            b1 = C._proc_stat(backend)[2]
            out.append(("PostgreSQL", "its backend for the same (fsync on)",
                        f"{(b1 - b0) / C._TICK / n * 1e6:.0f}"))
            engine.dispose()
        finally:
            cluster.stop()
    shutil.rmtree(work, ignore_errors=True)
    return out


def _tls_sink(pki_dir: Path) -> tuple[int, mp.Process]:
    """A TLS syslog receiver that reads and discards (an ARR on another machine, as far as
    this one's CPUs go), in its own process so that its CPU is accounted apart."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki_dir / "node.pem"), str(pki_dir / "node.key"))
    ctx.load_verify_locations(cafile=str(pki_dir / "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        import threading

        def drain(conn) -> None:
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    while s.recv(262144):
                        pass
            except (OSError, ssl.SSLError):
                pass

        while True:
            conn, _ = listener.accept()
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    proc = mp.get_context("fork").Process(target=serve, daemon=True)
    proc.start()
    listener.close()
    return port, proc


def _loads() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


MODES = {
    "off": "auditing off (OPENDMP_AUDIT_REPOSITORIES=none)",
    "emit-udp": "emitted: spool + sender → UDP sink (nobody reads)",
    "emit-tls": "emitted: spool + sender → TLS sink in another process (reads, discards)",
    "self": "emitted + stored by our ARR on the same machine (the default)",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.atna", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["pg", "sqlite"], default="pg")
    p.add_argument("--messages", type=int, default=40_000)
    p.add_argument("--tls-runs", type=int, default=2)
    p.add_argument("--udp-rates", default="2000,5000,10000")
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--rounds", type=int, default=2, help="ITI-18: alternations of the modes")
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--phases", default="tls,udp,iti18")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--breakdown", action="store_true",
                   help="only the in-process CPU cost per step of the ingest path")
    args = p.parse_args(argv)
    phases = set(args.phases.split(","))
    started = time.monotonic()
    if args.breakdown:
        rows = ingest_breakdown(pg=args.db == "pg")
        print(f"load average {_loads()}\n\n| process | step | CPU µs / message |\n|---|---|---|")
        for where, label, us in rows:
            print(f"| {where} | {label} | {us} |")
        e = emission_cost()
        print(f"| auditing one ITI-18 in process (request thread + spool thread), one call every 2 ms "
              f"| {e['process_audited'] - e['process_plain']:.1f} (request thread "
              f"{e['thread_audited'] - e['thread_plain']:.1f}) |")
        return 0

    work = Path(work_dir("opendmp-bench-atna-"))
    pki_dir = work / "pki"
    pki.issue(pki_dir, "node")
    pki.issue(pki_dir, "bench")
    tls_env = {"OPENDMP_TLS_CERT": str(pki_dir / "node.pem"), "OPENDMP_TLS_KEY": str(pki_dir / "node.key"),
               "OPENDMP_TLS_CA": str(pki_dir / "ca.pem")}
    cluster = None
    if args.db == "pg":
        cluster = BenchCluster()
        cluster.start()
        url = cluster.create_database("atna_bench")
        pg_pid = cluster.postmaster_pid
    else:
        url = f"sqlite:///{work / 'opendmp.sqlite3'}"
        pg_pid = None
    env = {**tls_env, "OPENDMP_AUDIT_TLS_PORT": str(free_port()),
           "OPENDMP_AUDIT_UDP_PORT": str(free_port()), "OPENDMP_MLLP_PORT": "0"}
    srv = ServerProcess(url, home=work / "home", env=env)
    tls_runs, udp, results, sink_proc = [], [], {}, None
    try:
        srv.start()
        if "tls" in phases:
            log(f"server up ({args.db}); TLS ingest, {args.tls_runs} x {args.messages} messages")
            tls_ingest(srv, pki_dir, min(5000, args.messages))  # warm-up
            for _ in range(args.tls_runs):
                tls_runs.append(tls_ingest(srv, pki_dir, args.messages, pg_pid))
        if "udp" in phases:
            for rate in [int(r) for r in args.udp_rates.split(",") if r]:
                log(f"UDP at {rate}/s")
                udp.append(udp_ingest(srv, rate))
        if "iti18" in phases:
            log(f"loading {args.patients} patients with 3 documents each")
            patients = [F.new_ins() for _ in range(args.patients)]
            srv.run_cli(["patient", "add", *patients], check=True)
            client = xds.registry(srv)
            for patient in patients:
                for _ in range(3):
                    client.call(xds.ITI42, F.submit_objects_request(F.submission(patient)))
            udp_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_sink.bind(("127.0.0.1", 0))
            tls_sink_port, sink_proc = _tls_sink(pki_dir)
            repositories = {"off": "none", "emit-udp": f"udp://127.0.0.1:{udp_sink.getsockname()[1]}",
                            "emit-tls": f"tls://127.0.0.1:{tls_sink_port}", "self": "self"}
            for _ in range(args.rounds):
                for mode in ("off", "emit-udp", "emit-tls", "self"):
                    srv.restart(env={"OPENDMP_AUDIT_REPOSITORIES": repositories[mode]})
                    time.sleep(1.5)  # the ARR's ingest process and the sender start
                    log(f"ITI-18 FindDocuments, {mode} (load {_loads()})")
                    r = iti18_latency(srv, patients, args.seconds, pg_pid)
                    r.load = os.getloadavg()[0]
                    results.setdefault(mode, []).append(r)
    finally:
        if sink_proc is not None:
            sink_proc.kill()
        if not args.keep:
            srv.stop()
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    print(f"\n### ATNA, {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
          f"({os.cpu_count()} CPUs), {args.db}; load average at the end {_loads()}\n")
    if tls_runs:
        print("One mutual-TLS connection, octet-counted RFC 5424 frames of "
              f"{tls_runs[0]['bytes']:,} bytes, until the ARR's counters say all are stored.\n")
        print("| run | messages | seconds | stored msg/s | MB/s | load avg (1 min) before → after "
              "| CPU µs/msg: receiver | ingest | PostgreSQL | client | rest of machine |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for i, t in enumerate(tls_runs, 1):
            c = t["cpu_us"]
            print(f"| {i} | {t['messages']:,} | {t['seconds']:.2f} | {t['rate']:,.0f} | "
                  f"{t['mb_s']:.1f} | {t['load']:.1f} → {t['load_after']:.1f} | {c['receiver']:.0f} | "
                  f"{c['ingest']:.0f} | {c['postgres']:.0f} | {c['client']:.0f} | {c['others']:.0f} |")
    if udp:
        print("\n| UDP offered/s | sent | received | stored | loss | load avg (1 min) |")
        print("|---|---|---|---|---|---|")
        for u in udp:
            print(f"| {u['rate']:,} | {u['sent']:,} | {u['received']:,} | {u['stored']:,} | "
                  f"{100 * u['loss']:.1f} % | {u['load']:.1f} |")
    if results:
        e = emission_cost()
        added = e["process_audited"] - e["process_plain"]
        print(f"\nIn process (no HTTP, no database; one call every 2 ms), auditing one ITI-18 adds "
              f"**{added:.0f} µs of CPU** (request thread {e['thread_audited'] - e['thread_plain']:.0f} µs, "
              f"the rest in the spool thread, fdatasync included) and "
              f"{e['wall_audited'] - e['wall_plain']:.0f} µs to the call's wall time.\n")
        print("| ITI-18 FindDocuments, 1 client | requests | per second | p50 ms | p99 ms | mean ms "
              "| server CPU ms/req: all | gunicorn | sender | ARR | PostgreSQL CPU ms/req "
              "| rest of machine % | load avg |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        summary = {}
        for mode, label in MODES.items():
            runs = results[mode]
            lat = sorted(x for r in runs for x in r.latencies)
            mean = 1000 * sum(lat) / len(lat)
            srv_ms = sum(r.cpu_ms_per_request("server") * r.count for r in runs) / len(lat)
            pg_ms = sum(r.cpu_ms_per_request("postgres") * r.count for r in runs) / len(lat) if pg_pid else 0.0
            foreign = max(r.cpu.get("foreign", 0.0) for r in runs)
            summary[mode] = (mean, srv_ms, pg_ms)
            p50 = 1000 * lat[len(lat) // 2]
            p99 = 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
            rate = len(lat) / sum(r.seconds for r in runs)
            loads = "/".join(f"{r.load:.1f}" for r in runs)
            parts = {k: sum(r.cpu_ms_per_request("server") * r.split[k] * r.count for r in runs)
                     / len(lat) for k in ("gunicorn", "sender", "arr")}
            print(f"| {label} | {len(lat):,} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {mean:.2f} | "
                  f"{srv_ms:.2f} | {parts['gunicorn']:.2f} | {parts['sender']:.3f} | "
                  f"{parts['arr']:.3f} | {pg_ms:.2f} | ≤{foreign:.0f} | {loads} |")
        base_mean, base_srv, base_pg = summary["off"]
        print()
        for mode in ("emit-udp", "emit-tls", "self"):
            mean, srv_ms, pg_ms = summary[mode]
            print(f"- {MODES[mode]}: latency +{mean - base_mean:.3f} ms mean "
                  f"({100 * (mean - base_mean) / base_mean:+.1f} %); CPU +{srv_ms - base_srv:.3f} ms "
                  f"server + {pg_ms - base_pg:.3f} ms PostgreSQL per request "
                  f"({100 * (srv_ms + pg_ms - base_srv - base_pg) / (base_srv + base_pg):+.1f} % of "
                  f"the request's CPU)")
    print(f"\n(whole run {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
