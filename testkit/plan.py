"""Parse NIST XDS Toolkit test directories (``testplan.xml``) into typed steps.

Layout of a toolkit test (``xdstools2/.../testkit/tests/<test>/``)::

    <test>/index.idx             section names, one per line, run in this order
    <test>/<section>/testplan.xml
    <test>/<section>/*.xml       metadata, query and document files the plan names
    <test>/collections.txt       collections the test belongs to (reg, SQ.b, ...)
    <test>/readme.txt

A test without ``index.idx`` but with its own ``testplan.xml`` is a single
anonymous section (the toolkit logs it under the section name ``None``).

A ``testplan.xml`` holds ``<TestStep id=...>`` elements, each with an optional
``<ExpectedStatus>`` (``Success``, ``Failure``, ``PartialSuccess`` or ``Fault``;
several may be given, any of them is accepted), ``<ExpectedErrorCode>``,
``<ExpectedErrorMessage>`` and exactly one ``<...Transaction>`` element whose
children are *instructions* (``MetadataFile``, ``AssignUuids``, ``UseId``,
``UseReport``, ``Report``, ``ExpectedContents``, ``Assertions``, ...).  This
module only reads; what the instructions mean is implemented in
:mod:`testkit.context` (id bookkeeping), :mod:`testkit.steps` (transactions) and
:mod:`testkit.expect` (expectations).  Instructions this runner does not know are
kept in :attr:`Transaction.unknown` so that the executor can refuse to claim a
PASS it did not earn.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

#: Name the toolkit gives the section of a test without ``index.idx``.
ANONYMOUS_SECTION = "None"

#: Transactions that only read from the system under test; skipping one of them does
#: not invalidate the steps after it (skipping any other kind does, see steps.Runner).
READ_ONLY_TRANSACTIONS = {"StoredQueryTransaction", "RetrieveTransaction", "NullTransaction",
                          "PatientIdentityFeedTransaction", "TestStep", "TestPlan"}

#: Transaction elements this runner knows how to execute (others are SKIP).
KNOWN_TRANSACTIONS = {
    "RegisterTransaction",
    "StoredQueryTransaction",
    "PatientIdentityFeedTransaction",
    "ProvideAndRegisterTransaction",
    "RetrieveTransaction",
    "NullTransaction",
}

class PlanError(ValueError):
    """A test directory or test plan cannot be read."""


@dataclass
class UseId:
    """``<UseId testdir= id= step= section= symbol= [value=]/>``: replace ``symbol`` by the
    value another step assigned to ``id`` in its log section (AssignedUuids, AssignedUids,
    AssignedPatientId, AssignedSourceId)."""

    symbol: str
    id: str | None = None
    step: str | None = None
    section: str | None = None
    testdir: str | None = None
    value: str | None = None


@dataclass
class UseReport:
    """``<UseReport test= section= step= reportName= useAs=/>``: replace ``useAs`` by a value
    another step reported.  ``test`` defaults to the current test; section ``THIS`` is the
    current section."""

    report_name: str
    use_as: str
    section: str
    step: str
    test: str | None = None


@dataclass
class ReportSpec:
    """``<Report name= section=>XPATH</Report>``: after the step, publish the string value of
    XPATH evaluated on the step's ``InputMetadata`` (request) or ``Result`` (response)."""

    name: str
    section: str
    xpath: str


@dataclass
class UseXPath:
    """``<UseXPath testdir= step= symbol=>XPATH</UseXPath>`` against another step's log."""

    symbol: str
    xpath: str
    step: str | None = None
    testdir: str | None = None
    file: str | None = None


@dataclass
class UseObjectRef:
    """``<UseObjectRef testdir= step= index= symbol=/>``: the n-th ObjectRef of a query result."""

    symbol: str
    step: str
    index: int
    testdir: str | None = None


@dataclass
class UseRepositoryUniqueId:
    """``<UseRepositoryUniqueId testdir= step= symbol=/>``: repositoryUniqueId of the
    DocumentEntries returned by another step's query."""

    symbol: str
    step: str
    testdir: str | None = None


@dataclass
class DocumentSpec:
    """``<Document id="Document01">file</Document>`` of a Provide and Register step."""

    id: str
    file: str


@dataclass
class ReferenceDocument:
    """``<ReferenceDocument uid="$docuid1$">submit/my_document.txt</ReferenceDocument>``."""

    uid: str
    file: str


@dataclass
class ReferenceMetadata:
    """``<ReferenceMetadata testdir= step=/>``: the query result describing retrieved documents."""

    step: str
    testdir: str | None = None


@dataclass
class Transaction:
    """One ``<...Transaction>`` element with its instructions."""

    kind: str
    element: etree._Element
    xds_version: str | None = None          # "b", "a" or None
    metadata_file: str | None = None
    inline_metadata: etree._Element | None = None
    assign_uuids: bool = False
    assign_uids: bool = True
    no_assign_uid_to: str | None = None
    assign_patient_id: bool = True
    no_metadata: bool = False
    parse_metadata: bool = True
    no_convert: bool = False
    soap11: bool = False
    clean_params: bool = False
    is_async: bool = False
    wait_before_ms: int = 0
    create_new_patient_id: bool = False
    patient_id: str | None = None           # <PatientID> of a feed step
    use_ids: list[UseId] = field(default_factory=list)
    use_reports: list[UseReport] = field(default_factory=list)
    reports: list[ReportSpec] = field(default_factory=list)
    use_xpaths: list[UseXPath] = field(default_factory=list)
    use_object_refs: list[UseObjectRef] = field(default_factory=list)
    use_repository_unique_ids: list[UseRepositoryUniqueId] = field(default_factory=list)
    soap_headers: list[etree._Element] = field(default_factory=list)
    expected_contents: etree._Element | None = None
    data_refs: list[etree._Element] = field(default_factory=list)
    asserts: list[etree._Element] = field(default_factory=list)
    documents: list[DocumentSpec] = field(default_factory=list)
    reference_documents: list[ReferenceDocument] = field(default_factory=list)
    reference_metadata: list[ReferenceMetadata] = field(default_factory=list)
    expected_mime_types: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One ``<TestStep>``."""

    id: str
    expected_status: list[str]
    expected_error_codes: list[str]
    expected_error_messages: list[str]
    transaction: Transaction | None
    goal: str = ""
    #: step-level instructions outside any transaction (e.g. ``NewPatientId``)
    step_instructions: list[str] = field(default_factory=list)


@dataclass
class Section:
    """One section of a test (one ``testplan.xml``)."""

    test: str
    name: str
    path: Path
    steps: list[Step] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.test}/{self.name}"


@dataclass
class TestDef:
    """A toolkit test directory."""

    name: str
    path: Path
    sections: list[Section]
    collections: list[str] = field(default_factory=list)
    readme: str = ""


_WS = re.compile(r"\s+")


def _text(el: etree._Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _children(el: etree._Element):
    return [c for c in el if isinstance(c.tag, str)]


def _parse_transaction(el: etree._Element) -> Transaction:
    tx = Transaction(kind=_local(el), element=el)
    for part in _children(el):
        name = _local(part)
        a = part.attrib
        if name == "MetadataFile":
            tx.metadata_file = _text(part)
        elif name == "Metadata":
            kids = _children(part)
            tx.inline_metadata = kids[0] if kids else None
        elif name == "AssignUuids":
            tx.assign_uuids = True
        elif name == "NoAssignUids":
            tx.assign_uids = False
            if a.get("id"):
                tx.no_assign_uid_to = a["id"]
                tx.assign_uids = True
        elif name == "NoConvert":
            tx.no_convert = True
        elif name == "Report":
            tx.reports.append(ReportSpec(a.get("name", ""), a.get("section", ""),
                                         _WS.sub(" ", part.text or "").strip()))
        elif name == "UseReport":
            tx.use_reports.append(UseReport(
                report_name=a.get("reportName", ""), use_as=a.get("useAs", ""),
                section=a.get("section") or ANONYMOUS_SECTION, step=a.get("step", ""),
                test=a.get("test") or None))
        elif name == "ParseMetadata":
            tx.parse_metadata = _text(part) != "False"
        elif name == "NoMetadata":
            tx.no_metadata = True
        elif name == "SOAPHeader":
            kids = _children(part)
            if kids:
                tx.soap_headers.append(kids[0])
        elif name == "UseId":
            tx.use_ids.append(UseId(symbol=a.get("symbol", ""), id=a.get("id"), step=a.get("step"),
                                    section=a.get("section"), testdir=a.get("testdir"),
                                    value=a.get("value")))
        elif name == "UseXPath":
            tx.use_xpaths.append(UseXPath(symbol=a.get("symbol", ""), xpath=_text(part),
                                          step=a.get("step"), testdir=a.get("testdir"),
                                          file=a.get("file")))
        elif name == "UseObjectRef":
            try:
                index = int(a.get("index", "-1"))
            except ValueError:
                index = -1
            tx.use_object_refs.append(UseObjectRef(symbol=a.get("symbol", ""), step=a.get("step", ""),
                                                   index=index, testdir=a.get("testdir")))
        elif name == "UseRepositoryUniqueId":
            tx.use_repository_unique_ids.append(UseRepositoryUniqueId(
                symbol=a.get("symbol", ""), step=a.get("step", ""), testdir=a.get("testdir")))
        elif name == "Assertions":
            for sub in _children(part):
                if _local(sub) == "DataRef":
                    tx.data_refs.append(sub)
                elif _local(sub) == "Assert":
                    tx.asserts.append(sub)
        elif name == "XDSb":
            tx.xds_version = "b"
        elif name == "XDSa":
            tx.xds_version = "a"
        elif name == "NoPatientId":
            tx.assign_patient_id = False
        elif name == "SOAP11":
            tx.soap11 = True
        elif name == "SOAP12":
            tx.soap11 = False
        elif name == "ASync":
            tx.is_async = True
        elif name == "WaitBefore":
            try:
                tx.wait_before_ms = int(_text(part))
            except ValueError:
                tx.unknown.append("WaitBefore(unparsable)")
        elif name == "ExpectedContents":
            tx.expected_contents = part
        elif name == "Document":
            tx.documents.append(DocumentSpec(a.get("id", ""), _text(part)))
        elif name == "ReferenceDocument":
            tx.reference_documents.append(ReferenceDocument(a.get("uid", ""), _text(part)))
        elif name == "ReferenceMetadata":
            tx.reference_metadata.append(ReferenceMetadata(a.get("step", ""), a.get("testdir")))
        elif name == "CreateNewPatientId":
            tx.create_new_patient_id = True
        elif name == "PatientID":
            tx.patient_id = _text(part)
        elif name == "ExpectedMimeType":
            tx.expected_mime_types.append(_text(part))
        elif name == "CleanParams":
            tx.clean_params = True
        elif name in ("WSSECHeader", "InteractionSequence"):
            pass   # ignored by the toolkit too
        else:
            tx.unknown.append(name)
    return tx


def _parse_step(el: etree._Element) -> Step:
    statuses: list[str] = []
    codes: list[str] = []
    messages: list[str] = []
    transaction = None
    goals: list[str] = []
    extra: list[str] = []
    for part in _children(el):
        name = _local(part)
        if name == "ExpectedStatus":
            for value in _text(part).split("|"):
                if value.strip():
                    statuses.append(value.strip())
        elif name == "ExpectedErrorCode":
            if _text(part):
                codes.append(_text(part))
        elif name == "ExpectedErrorMessage":
            if _text(part):
                messages.append(_text(part))
        elif name == "Goal":
            goals.append(_WS.sub(" ", part.text or "").strip())
        elif name == "Rule":
            assertion = part.find("Assertion")
            if assertion is not None and not goals:
                goals.append(_WS.sub(" ", assertion.text or "").strip())
        elif name.endswith("Transaction") and transaction is None:
            transaction = _parse_transaction(part)
        else:
            extra.append(name)
    return Step(id=el.get("id", ""), expected_status=statuses or ["Success"],
                expected_error_codes=codes, expected_error_messages=messages,
                transaction=transaction, goal=" ".join(g for g in goals if g),
                step_instructions=extra)


def parse_testplan(path: Path, test: str, section: str) -> Section:
    """Parse one ``testplan.xml`` into a :class:`Section` (``error`` set if unreadable)."""
    sec = Section(test=test, name=section, path=path.parent)
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
        root = etree.parse(str(path), parser).getroot()
    except (OSError, etree.XMLSyntaxError) as exc:
        sec.error = f"cannot read {path}: {exc}"
        return sec
    for el in root.iter("TestStep"):
        sec.steps.append(_parse_step(el))
    if not sec.steps:
        sec.error = f"{path} has no TestStep"
    return sec


def read_index(test_dir: Path) -> list[str]:
    """Section names from ``index.idx`` (blank lines and ``#`` comments ignored)."""
    idx = test_dir / "index.idx"
    names: list[str] = []
    for line in idx.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def load_test(test_dir: str | os.PathLike) -> TestDef:
    """Read a toolkit test directory (sections in ``index.idx`` order)."""
    path = Path(test_dir).resolve()
    if not path.is_dir():
        raise PlanError(f"{test_dir}: not a directory")
    name = path.name
    collections: list[str] = []
    coll = path / "collections.txt"
    if coll.exists():
        collections = coll.read_text(encoding="utf-8", errors="replace").split()
    readme = ""
    if (path / "readme.txt").exists():
        readme = (path / "readme.txt").read_text(encoding="utf-8", errors="replace").strip()
    sections: list[Section] = []
    if (path / "index.idx").exists():
        for sec_name in read_index(path):
            plan = path / sec_name / "testplan.xml"
            if not plan.exists():
                sections.append(Section(test=name, name=sec_name, path=path / sec_name,
                                        error=f"section {sec_name}: {plan} is missing"))
                continue
            sections.append(parse_testplan(plan, name, sec_name))
    elif (path / "testplan.xml").exists():
        sections.append(parse_testplan(path / "testplan.xml", name, ANONYMOUS_SECTION))
    else:
        raise PlanError(f"{test_dir}: neither index.idx nor testplan.xml (not a toolkit test)")
    return TestDef(name=name, path=path, sections=sections, collections=collections,
                   readme=readme)


# ------------------------------------------------------------------ dependencies

def referenced_tests(test: TestDef) -> list[str]:
    """Names of other tests this test reads ids or reports from (UseReport ``test=``,
    UseId/UseObjectRef/... ``testdir=`` leaving the test directory), in first-use order."""
    seen: list[str] = []

    def add(name: str | None) -> None:
        if name and name != test.name and name not in seen:
            seen.append(name)

    for sec in test.sections:
        for step in sec.steps:
            tx = step.transaction
            if tx is None:
                continue
            for ur in tx.use_reports:
                add(ur.test)
            for ref in [*tx.use_ids, *tx.use_xpaths, *tx.use_object_refs,
                        *tx.use_repository_unique_ids, *tx.reference_metadata]:
                if ref.testdir:
                    target = (sec.path / ref.testdir).resolve()
                    # ../../<test>/<section> or ../<test>
                    if test.path not in target.parents and target != test.path:
                        add(target.parent.name if (target.parent / "index.idx").exists()
                            else target.name)
    return seen


def find_test_dir(name: str, roots: list[Path]) -> Path | None:
    """Locate test ``name`` in one of the testkit ``roots`` (directories holding tests)."""
    for root in roots:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return None


def order_with_dependencies(names: list[str], roots: list[Path]) -> list[Path]:
    """Test directories for ``names`` with the tests they depend on placed before them
    (depth first, in reference order).  Unknown names raise :class:`PlanError`."""
    ordered: list[Path] = []
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name in visiting:
            return
        path = find_test_dir(name, roots)
        if path is None:
            raise PlanError(f"test {name} not found under {', '.join(map(str, roots))}")
        visiting.add(name)
        try:
            deps = referenced_tests(load_test(path))
        except PlanError:
            deps = []
        for dep in deps:
            if find_test_dir(dep, roots) is not None:
                visit(dep)
        visiting.discard(name)
        done.add(name)
        ordered.append(path)

    for n in names:
        visit(n)
    return ordered


def tests_in_collection(collection: str, roots: list[Path]) -> list[str]:
    """Names of the tests whose ``collections.txt`` lists ``collection`` (sorted)."""
    names: set[str] = set()
    for root in roots:
        for coll in root.glob("*/collections.txt"):
            if collection in coll.read_text(encoding="utf-8", errors="replace").split():
                names.add(coll.parent.name)
    return sorted(names)
