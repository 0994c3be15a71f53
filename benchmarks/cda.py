"""CDA benchmark: validation + metadata derivation per document, on one core.

    python -m benchmarks.cda [--runs 200] [--no-pin]

For each document (the 135 KB CR-BIO corpus example TSH_1, a generated 140 KB CR-BIO --
the median lab report the issue names -- and a few other sizes), times the steps
``cda.validation.validate`` and ``cda.metadata.document_entry`` run, warm (schemas and
schematrons compiled once before timing, as in a server): safe parse (lxml), XSD
(ANS extended schema), schematron (Saxon: parse + SVRL transform), our header rules,
metadata derivation, then the whole ``validate() + document_entry()``. Pinned to one
CPU (``sched_setaffinity``). Prints a markdown table of medians and p95, in ms. Asserts
nothing about timings.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from cda import generator
from cda.document import parse_cda, read_header
from cda.metadata import Facility, document_entry, parse_code
from cda.validation import (
    _is_utf8,
    header_findings,
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
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def bench(name: str, data: bytes, runs: int) -> dict:
    root = parse_cda(data)
    header = read_header(root)
    volet = volet_of(header)
    sch = schematron(volet[1]) if volet else None
    text = data.decode("utf-8") if _is_utf8(data) else None
    for _ in range(5):  # warm-up: JIT-less, but caches, Saxon first-call costs
        validate(data)
        document_entry(read_header(data), FACILITY)
    steps = {
        "parse": lambda: read_header(parse_cda(data)),
        "xsd": lambda: schema_findings(root, header.is_french),
        "schematron": (lambda: sch.validate(text)) if sch else None,
        "header rules": lambda: header_findings(header),
        "metadata": lambda: document_entry(header, FACILITY),
        "total": lambda: (validate(data), document_entry(read_header(data), FACILITY)),
        "total without schematron": lambda: (validate(data, run_schematron=False),
                                             document_entry(read_header(data), FACILITY)),
    }
    out = {"document": name, "KB": f"{len(data) / 1024:.0f}",
           "volet": volet[0] if volet else "-"}
    for step, fn in steps.items():
        out[step] = "-" if fn is None else "%.2f / %.2f" % _time(fn, runs)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args(argv)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
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
