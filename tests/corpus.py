"""Access to the public conformance corpus (../shared/corpus), read-only.

The tests replay it; the product never reads it (what it needs at run time is vendored).
A missing corpus fails the tests that need it: CI always has it beside the checkout.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_path(rel: str) -> Path:
    path = CORPUS / rel
    if not path.exists():
        pytest.fail(f"corpus file missing: {path} (../shared/corpus must sit beside the checkout)")
    return path


def cases(predicate) -> list[dict]:
    """Rows of cases.tsv for which ``predicate(row)`` is true."""
    with open(corpus_path("cases.tsv"), newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh, delimiter="\t") if predicate(row)]
