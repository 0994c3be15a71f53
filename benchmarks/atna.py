"""ATNA benchmark: audit messages/s ingested (with storage) over one TLS connection and
over UDP, and the cost an ITI-18 request pays for emitting its audit message.

    PYTHONPATH=.:tests python -m benchmarks.atna [--db pg|sqlite] [--messages 50000]
        [--udp-rates 2000,5000,10000] [--seconds 10] [--patients 200] [--keep]

Starts the real server (tests/harness ServerProcess: ``opendmp serve`` with its ARR and
spool sender children) on a throwaway durable PostgreSQL (benchmarks.pg.BenchCluster) or
SQLite, then:

1. TLS ingest: one mutual-TLS connection sends ``--messages`` octet-counted RFC 5424
   frames, each an ITI-18 audit message as our registry emits it (2.6 KB, with its base64
   query); the rate is messages / time until the ARR's counters say all are stored
   (parsed, schema-validated, indexed, committed).
2. UDP ingest: datagrams paced at each of ``--udp-rates`` for 3 s; stored/s and loss.
3. ITI-18 cost: FindDocuments latency with one client, closed loop, on the same data,
   with auditing off (``OPENDMP_AUDIT_REPOSITORIES=none``) and on (default: spooled with
   fdatasync, delivered over TLS to our own ARR, which stores it).

Prints markdown tables; asserts nothing about timings (targets: >= 8,000 messages/s over
TLS, < 5 % added to an ITI-18). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import benchmarks  # noqa: F401  (tests/ on sys.path)
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


def tls_ingest(srv: ServerProcess, pki_dir: Path, n: int) -> dict:
    port = int(srv.extra_env["OPENDMP_AUDIT_TLS_PORT"])
    frames = [octet_frame(format_rfc5424(audit_message(i % 1000), hostname="bench"))
              for i in range(min(n, 1000))]
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    ctx.load_cert_chain(str(pki_dir / "bench.pem"), str(pki_dir / "bench.key"))
    base = stats(srv.home).get("stored", 0)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
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
    return {"messages": n, "bytes": size, "send_s": t_sent - t0, "seconds": t1 - t0,
            "rate": n / (t1 - t0), "mb_s": n * size / (t1 - t0) / 1e6}


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
            "loss": 1 - stored / sent if sent else 0.0}


def iti18_latency(srv: ServerProcess, patients: list[str], seconds: float, pg_pid) -> C.PhaseResult:
    wl = C.find_documents(srv.url("/xds/registry"), patients)
    return C.run_phase(wl, 1, seconds, 2.0, srv.proc.pid, pg_pid, seed=7)


def in_request_cost(n: int = 5000) -> float:
    """Microseconds the audit wrapper adds to an ITI-18 handler in-process (no HTTP): the
    facts copied in the request thread plus the background build + spool append it
    competes with for the GIL (fdatasync included)."""
    from lxml import etree

    from atna.auditor import Auditor, AuditSettings
    from atna.hooks import ITI18, audit_endpoint
    from soapstack.envelope import SoapRequest, SoapResponse
    from soapstack.wsgi import Operation, SoapEndpoint

    home = Path(tempfile.mkdtemp(prefix="opendmp-bench-atna-inproc-"))
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
    t0 = time.perf_counter()
    for _ in range(n):
        wrapped(request)
    auditor.flush(30)
    cost = (time.perf_counter() - t0) / n * 1e6
    shutil.rmtree(home, ignore_errors=True)
    return cost


def ingest_breakdown(n: int = 3000) -> list[tuple[str, float]]:
    """CPU µs per message (``time.process_time``) of each step of the ARR's ingest path,
    in process, storing into a throwaway SQLite database (``--breakdown``)."""
    from atna.message import parse_audit, schema_errors
    from atna.store import Received, _keys, _row, store_batch
    from atna.syslog import StreamFramer, parse_rfc5424
    from opendmp.db import make_engine, migrate
    from soapstack.xml import parse_xml

    data = b"".join(octet_frame(format_rfc5424(audit_message(i % 300), hostname="bench"))
                    for i in range(n))
    out = []

    def step(label, fn):
        t0 = time.process_time()
        result = fn()
        out.append((label, (time.process_time() - t0) / n * 1e6))
        return result

    frames = step("RFC 5425 framing", lambda: list(StreamFramer(1 << 20).feed(data)))
    msgs = step("RFC 5424 header", lambda: [parse_rfc5424(f.data).msg for f in frames])
    roots = step("XML parse", lambda: [parse_xml(m) for m in msgs])
    schema_errors(roots[0])  # load the schema outside the measure
    step("DICOM XSD validation", lambda: [schema_errors(r) for r in roots])
    records = step("parse_audit (parse + validate + typed record)",
                   lambda: [parse_audit(m) for m in msgs])
    step("search keys + row", lambda: [(_keys(r), _row(Received(r, "tls"))) for r in records])
    work = Path(tempfile.mkdtemp(prefix="opendmp-bench-atna-store-"))
    url = f"sqlite:///{work / 'a.sqlite3'}"
    migrate(url)
    engine = make_engine(url)
    items = [Received(r, "tls", "bench", "o", i, 1) for i, r in enumerate(records)]
    step("store_batch, SQLite, 500 per transaction",
         lambda: [store_batch(engine, items[i:i + 500]) for i in range(0, n, 500)])
    engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.atna", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["pg", "sqlite"], default="pg")
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--udp-rates", default="2000,5000,10000")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--breakdown", action="store_true",
                   help="only the in-process CPU cost per step of the ingest path")
    args = p.parse_args(argv)
    if args.breakdown:
        print(f"load average {os.getloadavg()[0]:.2f}\n\n| step | CPU µs / message |\n|---|---|")
        for label, us in ingest_breakdown():
            print(f"| {label} | {us:.1f} |")
        print(f"| in-request cost of auditing one ITI-18 (wall) | {in_request_cost(3000):.1f} |")
        return 0

    work = Path(tempfile.mkdtemp(prefix="opendmp-bench-atna-"))
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
    try:
        srv.start()
        log(f"server up ({args.db}); TLS ingest of {args.messages} messages")
        tls_ingest(srv, pki_dir, min(5000, args.messages))  # warm-up
        tls = tls_ingest(srv, pki_dir, args.messages)
        udp = []
        for rate in [int(r) for r in args.udp_rates.split(",") if r]:
            log(f"UDP at {rate}/s")
            udp.append(udp_ingest(srv, rate))

        log(f"loading {args.patients} patients with 3 documents each")
        patients = [F.new_ins() for _ in range(args.patients)]
        srv.run_cli(["patient", "add", *patients], check=True)
        client = xds.registry(srv)
        for patient in patients:
            for _ in range(3):
                client.call(xds.ITI42, F.submit_objects_request(F.submission(patient)))
        results = {}
        # "emit": spooled and sent over UDP to a bound socket nobody reads (an ARR on
        # another machine, as far as this one's CPUs are concerned)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        modes = {"on": "self", "off": "none", "emit": f"udp://127.0.0.1:{sink.getsockname()[1]}",
                 "nofsync": f"udp://127.0.0.1:{sink.getsockname()[1]}"}
        for mode in ("on", "off", "emit", "nofsync") * 2:
            srv.restart(env={"OPENDMP_AUDIT_REPOSITORIES": modes[mode],
                             "OPENDMP_AUDIT_FSYNC": "0" if mode == "nofsync" else "1"})
            log(f"ITI-18 FindDocuments, auditing {mode}")
            results.setdefault(mode, []).append(iti18_latency(srv, patients, args.seconds, pg_pid))
    finally:
        if not args.keep:
            srv.stop()
            if cluster is not None:
                cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    print(f"\n### ATNA on {platform.node()} ({os.cpu_count()} CPUs), {args.db}\n")
    print("| ingest | messages | message bytes | seconds | stored messages/s | MB/s |")
    print("|---|---|---|---|---|---|")
    print(f"| one TLS connection (mutual TLS, octet counting) | {tls['messages']:,} | {tls['bytes']:,} | "
          f"{tls['seconds']:.2f} | {tls['rate']:,.0f} | {tls['mb_s']:.1f} |")
    print("\n| UDP offered/s | sent | received | stored | loss |")
    print("|---|---|---|---|---|")
    for u in udp:
        print(f"| {u['rate']:,} | {u['sent']:,} | {u['received']:,} | {u['stored']:,} | {100 * u['loss']:.1f} % |")
    print(f"\nin-process cost of auditing one ITI-18 (wrapper + build + spool, fdatasync "
          f"included, until flushed): {in_request_cost():.0f} µs per request\n")
    print("| ITI-18 FindDocuments, 1 client | requests | per second | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|---|")
    means = {}
    labels = {"off": "auditing off", "emit": "audit emitted (spool + sender, ARR elsewhere)",
              "nofsync": "the same without the spool's fdatasync (unsafe; for comparison)",
              "on": "audit emitted + stored by our ARR on the same 2 CPUs"}
    for mode in ("off", "emit", "nofsync", "on"):
        runs = results[mode]
        lat = [x for r in runs for x in r.latencies]
        lat.sort()
        mean = 1000 * sum(lat) / len(lat)
        means[mode] = mean
        p50 = 1000 * lat[len(lat) // 2]
        p99 = 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        rate = len(lat) / sum(r.seconds for r in runs)
        print(f"| {labels[mode]} | {len(lat):,} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {mean:.2f} |")
    for mode in ("emit", "nofsync", "on"):
        print(f"\n{labels[mode]}: +{means[mode] - means['off']:.3f} ms mean "
              f"({100 * (means[mode] - means['off']) / means['off']:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
