"""Vendored XSDs and WSDLs are unmodified: their git blob ids are those of schemas/SOURCES.md."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_every_vendored_schema_matches_its_recorded_blob():
    table = (ROOT / "schemas" / "SOURCES.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{40})` \|$", table, re.M))
    on_disk = {str(p.relative_to(ROOT)) for d in ("schemas", "wsdl")
               for p in (ROOT / d).rglob("*") if p.is_file() and p.name != "SOURCES.md"}
    assert on_disk == set(recorded)
    changed = [p for p, blob in recorded.items() if git_blob_id((ROOT / p).read_bytes()) != blob]
    assert not changed
