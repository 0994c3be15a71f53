"""PIX Manager benchmark: ITI-8 feeds/s and ITI-9 query latency over MLLP, PostgreSQL.

    PYTHONPATH=.:tests python -m benchmarks.pix [--patients 1000000] [--seconds 10]
        [--connections 1,4,8] [--processes 2] [--keep]

Starts a throwaway, durable PostgreSQL (benchmarks.pg.BenchCluster: fsync and
synchronous_commit on) and the real server (tests/harness ServerProcess: ``opendmp serve``
with its MLLP listener child), bulk-loads ``--patients`` patients directly in the
database (each: a cross-reference group, a local IPP and an INS-NIR identifier, and the
INS in the registry's ``patient`` table, copied in with COPY), then measures with real
MLLP clients (one forked process per connection, persistent connection, closed loop):

- ITI-8: ADT^A01 registering a new patient (new IPP + new INS with its traits: INS key
  check, trait check, link, registry ``patient`` insert, one transaction each);
- ITI-9: QBP^Q23 on the IPP of a random loaded patient (answer: its INS).

Prints a markdown table; asserts nothing about timings (targets: >= 1,000 feeds/s,
query p99 < 5 ms). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import platform
import random
import socket
import statistics
import sys
import time
import uuid

import psycopg

import benchmarks  # noqa: F401  (tests/ on sys.path)
from harness import ServerProcess, free_port
from opendmp.db import migrate
from pix.ins import ins_key

from .dataset import conninfo
from .pg import BenchCluster, server_facts

LOCAL = "1.2.250.1.999.42.1"
NIR = "1.2.250.1.213.1.4.8"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ins_of(i: int) -> str:
    n13 = f"18405{i:08d}"
    return f"{n13}{ins_key(n13):02d}"


def ipp_of(i: int) -> str:
    return f"IPP{i:09d}"


# ------------------------------------------------------------------ bulk load

def _copy(conn, table: str, columns: str, rows) -> None:
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as cp:
        buf = io.StringIO()
        n = 0
        for row in rows:
            buf.write("\t".join(row))
            buf.write("\n")
            n += 1
            if n % 50_000 == 0:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())


def bulk_load(url: str, n: int) -> float:
    t0 = time.perf_counter()
    now = str(int(time.time() * 1000))
    traits = '{"birth_name": "BENCH", "first_names": "JEAN", "sex": "M", "birth_date": "19840512"}'
    with psycopg.connect(conninfo(url), autocommit=False) as conn:
        for ix in ("uq_pix_identifier", "ix_pix_identifier_xref", "ix_pix_identifier_match"):
            conn.execute(f"DROP INDEX {ix}")
        _copy(conn, "pix_xref", "pk, updated_at", ((str(i + 1), now) for i in range(n)))
        _copy(conn, "pix_identifier",
              "pk, domain, id_value, type_code, xref_pk, is_ins, traits, source, updated_at",
              ((str(2 * i + 1), LOCAL, ipp_of(i), "PI", str(i + 1), "0", traits, "HIS|CHU", now)
               for i in range(n)))
        _copy(conn, "pix_identifier",
              "pk, domain, id_value, type_code, xref_pk, is_ins, traits, source, updated_at",
              ((str(2 * i + 2), NIR, ins_of(i), "INS", str(i + 1), "1", traits, "HIS|CHU", now)
               for i in range(n)))
        _copy(conn, "patient", "pk, cx", ((str(i + 1), f"{ins_of(i)}^^^&{NIR}&ISO")
                                          for i in range(n)))
        conn.execute("CREATE UNIQUE INDEX uq_pix_identifier ON pix_identifier (domain, id_value)")
        conn.execute("CREATE INDEX ix_pix_identifier_xref ON pix_identifier (xref_pk)")
        conn.execute("CREATE INDEX ix_pix_identifier_match ON pix_identifier (match_key)")
        for table, seq_max in (("pix_xref", n), ("pix_identifier", 2 * n), ("patient", n)):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), {seq_max})")
        conn.commit()
        conn.autocommit = True
        for table in ("pix_xref", "pix_identifier", "patient"):
            conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - t0


# ------------------------------------------------------------------ clients

def _frame(text: str) -> bytes:
    return b"\x0b" + text.encode() + b"\x1c\r"


def _exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def feed_message(i: int) -> bytes:
    return _frame(
        f"MSH|^~\\&|HIS|CHU|OPENDMP|OPENDMP|20260101120000||ADT^A01^ADT_A01|F{i}|P|2.5\r"
        f"EVN|A01|20260101120000\r"
        f"PID|1||{ipp_of(i)}^^^HOSP&{LOCAL}&ISO^PI~{ins_of(i)}^^^&{NIR}&ISO^INS||"
        f"BENCH^JEAN^JEAN^^^^L||19840512|M\rPV1|1|N\r")


def query_message(i: int, tag: int) -> bytes:
    return _frame(
        f"MSH|^~\\&|CONSUMER|DEPT|OPENDMP|OPENDMP|20260101120000||QBP^Q23^QBP_Q21|Q{tag}|P|2.5\r"
        f"QPD|IHE PIX Query|T{tag}|{ipp_of(i)}^^^HOSP&{LOCAL}&ISO^PI\rRCP|I\r")


V3 = "urn:hl7-org:v3"


def iti45_body(i: int) -> bytes:
    """A PRPA_IN201309UV02 asking for patient ``i``'s identifiers by its local id."""
    return f"""<PRPA_IN201309UV02 xmlns="{V3}" ITSVersion="XML_1.0">
 <id root="{uuid.uuid4()}"/><creationTime value="20260101120000"/>
 <interactionId root="2.16.840.1.113883.1.6" extension="PRPA_IN201309UV02"/>
 <processingCode code="P"/><processingModeCode code="T"/><acceptAckCode code="AL"/>
 <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.2.250.1.999.1"/></device></receiver>
 <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.2.250.1.999.3"/></device></sender>
 <controlActProcess classCode="CACT" moodCode="EVN">
  <code code="PRPA_TE201309UV02" codeSystem="2.16.840.1.113883.1.18"/>
  <queryByParameter><queryId root="1.2.250.1.999.2" extension="{uuid.uuid4().hex}"/>
   <statusCode code="new"/><responsePriorityCode code="I"/>
   <parameterList><patientIdentifier><value root="{LOCAL}" extension="{ipp_of(i)}"/>
    <semanticsText>Patient.Id</semanticsText></patientIdentifier></parameterList>
  </queryByParameter></controlActProcess></PRPA_IN201309UV02>""".encode()


def _v3_client(conn, url: str, index: int, n_patients: int, t_start: float,
               t_end: float) -> None:
    """ITI-45 over SOAP 1.2 on one keep-alive HTTP connection."""
    from soapstack.client import SoapClient

    rng = random.Random(index)
    client = SoapClient(url)
    lat, errors, ops = [], 0, 0
    while time.perf_counter() < t_start:
        time.sleep(0.001)
    while time.perf_counter() < t_end:
        body = iti45_body(rng.randrange(n_patients))
        t0 = time.perf_counter()
        reply = client.call("urn:hl7-org:v3:PRPA_IN201309UV02", body)
        lat.append(time.perf_counter() - t0)
        ops += 1
        code = reply.payload.xpath("string(//*[local-name()='queryResponseCode']/@code)")
        errors += code != "OK"
    client.close()
    conn.send((ops, errors, lat))
    conn.close()


def _client(conn, kind: str, port: int, index: int, base: int, n_patients: int,
            t_start: float, t_end: float) -> None:
    rng = random.Random(index)
    lat, errors, ops = [], 0, 0
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    seq = base + index * 1_000_000
    while time.perf_counter() < t_start:
        time.sleep(0.001)
    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        if kind == "feed":
            msg = feed_message(seq)
            seq += 1
            want = b"MSA|AA"
        else:
            msg = query_message(rng.randrange(n_patients), seq)
            seq += 1
            want = b"QAK|"
        t0 = time.perf_counter()
        answer = _exchange(sock, msg)
        lat.append(time.perf_counter() - t0)
        ops += 1
        if want not in answer or (kind == "query" and b"|OK" not in answer):
            errors += 1
    sock.close()
    conn.send((ops, errors, lat))
    conn.close()


def run_phase(kind: str, port, connections: int, seconds: float, base: int,
              n_patients: int, warmup: float = 1.0) -> dict:
    ctx = mp.get_context("fork")
    t_start = time.perf_counter() + 0.5
    # warm-up (not counted): same load, shorter
    procs, pipes = [], []
    t_end = t_start + warmup + seconds
    for i in range(connections):
        parent, child = ctx.Pipe(duplex=False)
        if kind == "iti45":
            p = ctx.Process(target=_v3_client, args=(child, port, i, n_patients, t_start, t_end))
        else:
            p = ctx.Process(target=_client, args=(child, kind, port, i, base, n_patients,
                                                  t_start, t_end))
        p.start()
        procs.append(p)
        pipes.append(parent)
    results = [pp.recv() for pp in pipes]
    for p in procs:
        p.join()
    ops = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])
    # drop the warm-up share of the samples (the first `warmup` seconds of each client)
    total_time = warmup + seconds
    keep = int(len(lat) * seconds / total_time)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: 0)
    return {"kind": kind, "connections": connections, "ops": ops, "errors": errors,
            "rate": ops / total_time, "p50": pct(0.50), "p99": pct(0.99),
            "mean": statistics.fmean(lat) * 1000 if lat else 0, "kept": keep}


def explain(url: str, n: int) -> list[str]:
    i = random.randrange(n)
    with psycopg.connect(conninfo(url)) as conn:
        out = []
        for sql, params in (
            ("SELECT pk, xref_pk, merged_into FROM pix_identifier WHERE domain = %s AND id_value = %s",
             (LOCAL, ipp_of(i))),
            ("SELECT pk, domain, id_value, type_code FROM pix_identifier WHERE xref_pk = %s "
             "AND merged_into IS NULL ORDER BY pk", (i + 1,)),
        ):
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
            out += [r[0] for r in rows] + [""]
        return out


# ------------------------------------------------------------------ main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pix", description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", default="1,4,8")
    ap.add_argument("--processes", type=int, default=2, help="OPENDMP_MLLP_PROCESSES")
    ap.add_argument("--threads", type=int, default=8, help="OPENDMP_MLLP_THREADS")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    conns = [int(c) for c in a.connections.split(",") if c.strip()]
    cluster = BenchCluster()
    cluster.start()
    server = None
    try:
        url = cluster.create_database(f"pixbench_{os.getpid()}")
        migrate(url)
        log(f"bulk-loading {a.patients:,} patients ...")
        load_s = bulk_load(url, a.patients)
        log(f"loaded in {load_s:.1f} s")
        port = free_port("127.0.0.1")
        server = ServerProcess(url, env={
            "OPENDMP_MLLP_PORT": str(port), "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO",
            "OPENDMP_MLLP_PROCESSES": str(a.processes), "OPENDMP_MLLP_THREADS": str(a.threads),
            "OPENDMP_WORKERS": "1",
        })
        server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        rows = []
        base = a.patients + 1
        for c in conns:
            log(f"ITI-8 feeds, {c} connection(s) ...")
            rows.append(run_phase("feed", port, c, a.seconds, base, a.patients))
            base += 10_000_000
        for c in conns:
            log(f"ITI-9 queries, {c} connection(s) ...")
            rows.append(run_phase("query", port, c, a.seconds, base, a.patients))
        for c in conns:
            log(f"ITI-45 queries (HL7v3 over SOAP), {c} connection(s) ...")
            rows.append(run_phase("iti45", server.url("/pix/v3"), c, a.seconds, base,
                                  a.patients))
        facts = server_facts(url)
        print(f"\n## PIX Manager over MLLP, PostgreSQL {facts['version']} "
              f"(fsync={facts['fsync']}, synchronous_commit={facts['synchronous_commit']})\n")
        print(f"{a.patients:,} patients loaded ({2 * a.patients:,} identifiers) in {load_s:.0f} s; "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"Python {platform.python_version()}; server: {a.processes} MLLP process(es) x "
              f"{a.threads} threads; clients on the same machine; "
              f"{a.seconds:.0f} s per phase after 1 s warm-up.\n")
        print("| transaction | connections | messages | errors | per second | p50 ms | p99 ms | mean ms |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            name = {"feed": "ITI-8 ADT^A01 (new patient + INS)", "query": "ITI-9 QBP^Q23",
                    "iti45": "ITI-45 PRPA_IN201309UV02 (SOAP)"}[r["kind"]]
            print(f"| {name} | {r['connections']} | {r['ops']:,} | {r['errors']} | "
                  f"{r['rate']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['mean']:.2f} |")
        print("\nQuery plans (EXPLAIN ANALYZE of the two ITI-9 statements):\n```")
        print("\n".join(explain(url, a.patients)))
        print("```")
    finally:
        if server is not None:
            server.stop()
        if not a.keep:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
