"""CDA benchmark: validation + metadata derivation per document, on one core; and the
ITI-41 CDA intake (CPU per document in-process, worker RSS through the real server).

    python -m benchmarks.cda [--runs 200] [--no-pin]
    python -m benchmarks.cda --intake [--runs 200] [--no-pin]
    python -m benchmarks.cda --intake-rss [--rss-sizes 5,12,40]

For each document (the 135 KB CR-BIO corpus example TSH_1, a generated 140 KB CR-BIO --
the median lab report the issue names -- and a few other sizes), times the steps
``cda.validation.validate`` and ``cda.metadata.document_entry`` run, warm (schemas and
schematrons compiled once before timing, as in a server): safe parse (lxml), XSD
(ANS extended schema), schematron (Saxon: parse + SVRL transform, and Saxon's parse
alone: the transform's own cost is the difference, since it builds its ``xsl:key``
index on each new document), our header rules, metadata derivation, then the whole
``validate()`` + ``document_entry(report.header)``. CPU time (``process_time``: the
machine is shared), pinned to one CPU (``sched_setaffinity``). Prints a markdown table
of medians and p95, in ms, and the load average. Asserts nothing about timings.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from benchmarks import work_dir
from cda import generator
from cda.document import parse_cda, read_header
from cda.metadata import Facility, document_entry, parse_code
from cda.validation import (
    header_findings,
    parse_for_saxon,
    schema_findings,
    schematron,
    validate,
    volet_of,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda" / "ans-ci-sis"
FACILITY = Facility(parse_code("AMBULATOIRE^Ambulatoire^1.2.250.1.213.1.1.4.9"),
                    parse_code("SA01^Etablissement public de santé^1.2.250.1.71.4.2.4"))


def documents() -> list[tuple[str, bytes]]:
    docs = []
    for name in ("BIO-CR-BIO_2024.01_TSH_1.xml", "VAC-NOTE_2023.01.xml",
                 "BIO-CR-BIO_2024.01_Electrophorese.xml", "IPS-FR_2024.01.xml"):
        if (CORPUS / name).exists():
            docs.append((name, (CORPUS / name).read_bytes()))
    # the generated CR-BIO closest to 140 KB (about 1.1 KB per result)
    results = 10
    while len(generator.lab_report(seed=7, results=results)) < 140_000:
        results += 5
    docs.insert(1, (f"generated CR-BIO ({results} results)", generator.lab_report(seed=7,
                                                                                 results=results)))
    return docs


def _time(fn, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t = time.process_time()     # CPU time: the machine is shared
        fn()
        samples.append((time.process_time() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def bench(name: str, data: bytes, runs: int) -> dict:
    root = parse_cda(data)
    header = read_header(root)
    volet = volet_of(header)
    sch = schematron(volet[1]) if volet else None
    for _ in range(5):  # warm-up: JIT-less, but caches, Saxon first-call costs
        document_entry(validate(data).header, FACILITY)
    steps = {
        "parse": lambda: read_header(parse_cda(data)),
        "xsd": lambda: schema_findings(root, header.is_french),
        "schematron": (lambda: sch.validate(data)) if sch else None,
        "of which Saxon parse": (lambda: parse_for_saxon(data)) if sch else None,
        "header rules": lambda: header_findings(header),
        "metadata": lambda: document_entry(header, FACILITY),
        "total": lambda: document_entry(validate(data).header, FACILITY),
        "total without schematron": lambda: document_entry(
            validate(data, run_schematron=False).header, FACILITY),
    }
    out = {"document": name, "KB": f"{len(data) / 1024:.0f}",
           "volet": volet[0] if volet else "-"}
    for step, fn in steps.items():
        out[step] = "-" if fn is None else "%.2f / %.2f" % _time(fn, runs)
    return out


# ---------------------------------------------------------------------------- ITI-41 intake

def intake_documents(sizes_mb=(12, 40)) -> list[tuple[str, list[bytes]]]:
    """The repository benchmark's three CDAs (10 KB VAC-NOTE, 140 KB CR-BIO, 5 MB CDA level
    1) and CDA level 1 of ``sizes_mb`` MiB built the same way, as the 64 KiB chunks the
    repository reads from an MTOM attachment."""
    import random

    from . import repository as R
    docs = R.documents(1)
    rng = random.Random(2)
    for mb in sizes_mb:
        docs.append(R.cda_template(R.CORPUS / "DOC_NON_STRUCTURE_CDA-R2-N1.xml", f"{mb} MB",
                                   mb * R.MIB, {}, "", rng))
    out = []
    for d in docs:
        data = d.content
        out.append((d.label, [data[i:i + 65536] for i in range(0, len(data), 65536)]))
    return out


def _whole_document(chunks: list[bytes]):
    """What the intake did before it read headers only: keep the chunks, join them, parse
    the whole document (safe parser), read the header, extract the summary facts."""
    from cda.summary import extract
    header = read_header(parse_cda(b"".join(chunks)))
    return header, extract(header) if header.structured else None


def _header_stream(chunks: list[bytes]):
    from cda.stream import CdaStream
    s = CdaStream()
    for c in chunks:
        s.feed(c)
    return s.result()


def bench_intake(runs: int) -> list[dict]:
    rows = []
    for label, chunks in intake_documents():
        row = {"document": label, "bytes": f"{sum(map(len, chunks)):,}"}
        for name, fn in (("whole document (before)", _whole_document),
                         ("header stream (now)", _header_stream)):
            try:
                fn(chunks)
            except Exception as exc:  # noqa: BLE001 - the old path refuses large PDFs
                row[name] = f"refused: {str(exc)[:60]}"
                continue
            n = runs if sum(map(len, chunks)) < 10**6 else max(10, runs // 10)
            row[name] = "%.3f / %.3f" % _time(lambda: fn(chunks), n)
        rows.append(row)
    return rows


def bench_intake_rss(sizes_mb: list[int]) -> list[dict]:
    """Worker RSS around one ITI-41 of a CDA level 1 of each size (real server, one
    gunicorn worker x 4 threads, SQLite), as benchmarks/repository.py measures it."""
    import random

    from harness import ServerProcess, free_port
    from opendmp.db import migrate
    from repository.source import provide_and_register_request, ITI41_ACTION
    from soapstack.client import SoapClient

    from . import repository as R
    from . import rss
    home = Path(work_dir("opendmp-bench-cda-"))
    url = f"sqlite:///{home / 'opendmp.sqlite3'}"
    migrate(url)
    patients = [cx for cx, _ in R.register_patients(url, len(sizes_mb) + 3, 1)]
    server = ServerProcess(url, home=home, env={"OPENDMP_WORKERS": 1, "OPENDMP_THREADS": 4,
                                                "OPENDMP_MLLP_PORT": free_port()},
                           startup_timeout=60)
    server.start()
    rows = []
    try:
        workers = rss.http_workers(server.proc.pid, server.port)
        soap = SoapClient(server.url("/xds/repository"), timeout=600)
        rng = random.Random(3)
        pdf = dict(R.F.CR_BIO, format_code=R.F.code("urn:ihe:iti:xds-sd:pdf:2008",
                                                    "1.3.6.1.4.1.19376.1.2.3", "PDF"))
        jobs = [("warm-up", 2), ("warm-up", 2)] + [(f"{mb} MB", mb) for mb in sizes_mb]
        for k, (label, mb) in enumerate(jobs):
            d = R.cda_template(R.CORPUS / "DOC_NON_STRUCTURE_CDA-R2-N1.xml", label,
                               mb * R.MIB, pdf, "", rng)
            uid = f"1.2.250.1.999.77.{k}.1"
            chunks = d.render(patients[k].split("^", 1)[0], uid)
            sub = R.submission(patients[k], uid, f"1.2.250.1.999.77.{k}.2", None, d.mime_type, d)
            body, atts = provide_and_register_request(sub, {sub.documents[0].id: R.DocumentContent(
                d.mime_type, sum(map(len, chunks)), chunks)})
            time.sleep(0.5)
            before = rss.current(workers)
            with rss.Sampler(workers) as s:
                err = R.registry_error(soap.call(ITI41_ACTION, body, attachments=atts).payload)
            if label != "warm-up":
                rows.append({"document": f"CDA level 1, {mb} MiB", "ITI-41": err or "Success",
                             "RSS before MiB": f"{before / R.MIB:.1f}",
                             "peak MiB": f"{s.peak / R.MIB:.1f}",
                             "peak - before MiB": f"{(s.peak - before) / R.MIB:+.1f}"})
        soap.close()
    finally:
        server.stop()
    return rows


def _table(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--intake", action="store_true",
                    help="ITI-41 CDA intake: CPU per document, whole document vs header stream")
    ap.add_argument("--intake-rss", action="store_true",
                    help="ITI-41 of CDA level 1 through the real server: worker RSS")
    ap.add_argument("--rss-sizes", default="5,12,40", help="MiB, for --intake-rss")
    args = ap.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)\n")
    if args.intake_rss:
        _table(bench_intake_rss([int(x) for x in args.rss_sizes.split(",")]))
        return 0
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.intake:
        print("ITI-41 CDA intake, CPU ms per document (process_time), median / p95, one "
              "core, chunks of 64 KiB\n")
        _table(bench_intake(args.runs))
        return 0
    rows = [bench(name, data, args.runs) for name, data in documents()]
    cols = list(rows[0])
    print(f"CDA validation + metadata, ms per document, median / p95 of {args.runs} warm runs, "
          f"one core ({platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()})\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
