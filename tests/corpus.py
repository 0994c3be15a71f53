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


def restore_crlf(text: bytes, boundary: str) -> bytes:
    """The corpus keeps these traces with bare LF line ends (text files in git); MIME
    needs CRLF (RFC 2046 §5.1.1). Restore CRLF on delimiter and part-header lines and
    on the line end before each delimiter; part content is left byte for byte."""
    delim = b"--" + boundary.encode()
    lines = text.split(b"\n")
    out: list[bytes] = []
    in_headers = False
    for i, line in enumerate(lines):
        end = b"" if i == len(lines) - 1 else b"\n"
        bare = line[:-1] if line.endswith(b"\r") else line
        if bare.startswith(delim):
            if out and out[-1].endswith(b"\n") and not out[-1].endswith(b"\r\n"):
                out[-1] = out[-1][:-1] + b"\r\n"
            in_headers = not bare[len(delim):].startswith(b"--")
            out.append(bare + (b"\r\n" if end else b""))
        elif in_headers:
            out.append(bare + b"\r\n")
            in_headers = bool(bare)
        else:
            out.append(line + end)
    return b"".join(out)


def split_http(raw: bytes) -> tuple[dict[str, str], bytes]:
    """A recorded HTTP message: (headers by lower-case name, body)."""
    head, _, body = raw.partition(b"\n\n")
    headers = {}
    for line in head.decode("latin-1").splitlines():
        name, sep, value = line.partition(":")
        if sep and " " not in name.strip():
            headers[name.strip().lower()] = value.strip()
    return headers, body
