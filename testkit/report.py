"""Step result lines and the run summary.

One line per step::

    PASS  12346/single_doc/submit_doc  RegisterTransaction  status Success [ebRIM 2.1 converted]
    FAIL  11898/simple/simple  StoredQueryTransaction  found 3 SubmissionSets instead of 5
    SKIP  15801/update/update  MuTransaction  not supported by this runner yet
    PASS  11906/objectrefs/objectrefs  StoredQueryTransaction  status Success (1 assertion not checked: X)

and a summary with passed/failed/skipped counts, how many skips are ebRIM 2.1
metadata that could not be converted, and how many assertions were not checked.
``--json`` writes the same facts machine-readably.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import IO, Iterable

from lxml import etree

from .steps import StepResult


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_line(r: StepResult) -> str:
    """The report line of one step."""
    if r.status == "PASS":
        why = "; ".join(r.notes) if r.notes else "ok"
    else:
        why = "; ".join(r.reasons) if r.reasons else "-"
    if r.ebrim21 == "converted":
        why += " [ebRIM 2.1 converted]"
    line = f"{r.status:<4}  {r.label}  {r.kind}  {why}"
    if r.unchecked:
        line += f" ({_plural(len(r.unchecked), 'assertion')} not checked: {', '.join(r.unchecked)})"
    return line


def _dump(el: etree._Element | None) -> str:
    if el is None:
        return "(none)"
    return etree.tostring(el, pretty_print=True, encoding="unicode")


def format_verbose(r: StepResult) -> str:
    """Details printed after the line with ``--verbose``."""
    parts = []
    if r.status != "PASS" and r.notes:
        parts.append("    notes: " + "; ".join(r.notes))
    if r.request is not None:
        parts.append("    --- request\n" + _indent(_dump(r.request)))
    if r.response is not None:
        parts.append("    --- response\n" + _indent(_dump(r.response)))
    return "\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines())


_FOLDS = [
    (re.compile(r"^follows skipped step \S+"), "follows a skipped step"),
    (re.compile(r"^depends on \S+ which was skipped"), "depends on a skipped step"),
    (re.compile(r"^patient feed disabled .*"), "patient feed disabled (--patient-feed none)"),
    (re.compile(r"^test plan unusable: .*"), "test plan unusable (missing or unreadable testplan.xml)"),
    (re.compile(r"^test plan leaves placeholder.*"), "test plan leaves placeholders unresolved"),
    (re.compile(r"^test plan problem: .*"), "test plan problem (missing file, undefined symbolic id)"),
    (re.compile(r"^ebRIM 2.1 metadata could not be converted.*"), "ebRIM 2.1 metadata could not be converted"),
    (re.compile(r"^no assertion could be checked: .*simulator validation.*"),
     "no assertion could be checked (toolkit simulator validations)"),
]


def _reason_key(reason: str) -> str:
    for pattern, key in _FOLDS:
        if pattern.search(reason):
            return key
    return reason


class Summary:
    """Counts over all step results."""

    def __init__(self, results: Iterable[StepResult]) -> None:
        self.results = list(results)
        c = Counter(r.status for r in self.results)
        self.passed, self.failed, self.skipped = c["PASS"], c["FAIL"], c["SKIP"]
        self.skipped_ebrim21 = sum(1 for r in self.results
                                   if r.status == "SKIP" and r.ebrim21 == "unconvertible")
        self.converted = sum(1 for r in self.results if r.ebrim21 == "converted")
        self.unchecked = sum(len(r.unchecked) for r in self.results)
        self.passed_with_unchecked = sum(1 for r in self.results if r.status == "PASS" and r.unchecked)
        tests: dict[str, list[str]] = {}
        for r in self.results:
            tests.setdefault(r.test, []).append(r.status)
        self.tests = tests

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def skip_reasons(self) -> Counter:
        """Skip reasons with step labels and file names folded, most frequent first."""
        return Counter(_reason_key(r.reasons[0] if r.reasons else "-")
                       for r in self.results if r.status == "SKIP")

    def lines(self) -> list[str]:
        t_pass = sum(1 for s in self.tests.values() if all(x == "PASS" for x in s))
        t_fail = sum(1 for s in self.tests.values() if "FAIL" in s)
        t_other = len(self.tests) - t_pass - t_fail
        out = [
            f"Summary: {_plural(len(self.results), 'step')}: {self.passed} passed, "
            f"{self.failed} failed, {self.skipped} skipped "
            f"({self.skipped_ebrim21} of them because their ebRIM 2.1 metadata could not be converted)",
            f"Tests: {_plural(len(self.tests), 'test')}: {t_pass} fully passed, {t_fail} with failures, "
            f"{t_other} with skipped steps and no failure",
            f"Assertions not checked: {self.unchecked} (in {_plural(self.passed_with_unchecked, 'passed step')})",
            f"ebRIM 2.1 metadata converted to 3.0: {_plural(self.converted, 'step')}",
        ]
        reasons = self.skip_reasons()
        if reasons:
            out.append("Skip reasons:")
            for reason, n in reasons.most_common():
                out.append(f"  {n:4d}  {reason}")
        return out

    def to_json(self) -> dict:
        return {
            "passed": self.passed, "failed": self.failed, "skipped": self.skipped,
            "skipped_ebrim21_unconvertible": self.skipped_ebrim21,
            "ebrim21_converted": self.converted,
            "assertions_not_checked": self.unchecked,
            "steps": [{
                "test": r.test, "section": r.section, "step": r.step, "transaction": r.kind,
                "status": r.status, "reasons": r.reasons, "notes": r.notes,
                "not_checked": r.unchecked, "ebrim21": r.ebrim21, "checks": r.checks,
                "seconds": round(r.seconds, 3),
            } for r in self.results],
        }


def write_json(summary: Summary, stream: IO[str]) -> None:
    json.dump(summary.to_json(), stream, indent=2)
    stream.write("\n")
