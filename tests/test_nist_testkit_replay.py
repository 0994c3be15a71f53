"""The NIST XDS toolkit's registry tests, run by our own `opendmp testkit run` (the product
command conformance testers use) against the real server, on both databases.

Collections: ``reg`` and ``SQ.b`` (ITI-42 Register and every ITI-18 stored query, with the
toolkit's patient feed, id bookkeeping and ebRIM 2.1 -> 3.0 conversion) and the
lifecycle/folder collections ``reg_catlifecycle`` and ``reg_catfolder`` (RPLC, APND, XFRM,
deprecation of addenda, folder rules). Every step must pass; a step the runner cannot
judge would be reported as skipped or "not checked", and that fails this test too.
"""
from __future__ import annotations

import re
import sys

import pytest
from corpus import corpus_path

NIST_DOMAIN = "1.3.6.1.4.1.21367.2005.13.20.1000"
COLLECTIONS = ("reg", "SQ.b", "reg_catlifecycle", "reg_catfolder")


@pytest.fixture(scope="module")
def nist_server(module_server_factory):
    """A server configured as the NIST toolkit's affinity domain (its codes.xml, its
    patient assigning authority)."""
    return module_server_factory(env={"OPENDMP_VALUE_SETS": "nist",
                                      "OPENDMP_PATIENT_DOMAINS": NIST_DOMAIN})


def test_nist_registry_collections_pass(nist_server, tmp_path):
    testkit = corpus_path("messages/nist-testkit/tests")
    args = ["testkit", "run", "--testkit", str(testkit),
            "--registry", nist_server.url("/xds/registry"),
            "--patient-feed", f"cmd:{sys.executable} -m opendmp.cli patient add {{cx}}",
            "--json", str(tmp_path / "report.json")]
    for c in COLLECTIONS:
        args += ["--collection", c]
    proc = nist_server.run_cli(args, timeout=600)
    out = proc.stdout
    summary = re.search(r"Summary: (\d+) steps: (\d+) passed, (\d+) failed, (\d+) skipped", out)
    assert summary, out[-3000:] + proc.stderr[-3000:]
    total, passed, failed, skipped = map(int, summary.groups())
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert failed == 0, "\n".join(failures)
    assert skipped == 0
    assert "Assertions not checked: 0" in out
    assert passed == total >= 140  # 144 steps in 34 tests when this was written
    assert proc.returncode == 0
