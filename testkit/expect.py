"""Checking a response against what a toolkit test step expects.

Supported (semantics follow the toolkit's ``BasicTransaction`` and ``Validator``):

* ``ExpectedStatus`` -- ``Success``, ``Failure``, ``PartialSuccess`` (any of several)
  compared with the ``status`` of the RegistryResponse / AdhocQueryResponse /
  RetrieveDocumentSetResponse, which must be a full ``ResponseStatusType`` URN;
  ``Fault`` passes only when the answer is a SOAP Fault.  When only ``Success`` is
  expected, any RegistryError of severity Error fails the step (warnings are shown).
* ``ExpectedErrorCode`` -- every code must be among the returned ``errorCode`` values.
* ``ExpectedErrorMessage`` -- every string must occur in some returned
  ``errorCode: codeContext``.
* The response must be valid against the ebRS 3.0 / XDS.b schemas vendored in
  ``schemas/ihe-iti`` (the toolkit schema-validates responses too).
* ``ExpectedContents``: ``SubmissionSets``/``Documents``/``Folders``/``Associations``/
  ``ObjectRefs`` ``count=``, ``None``, ``NoSubmissionSet``, ``NoDocument``,
  ``SSwithOneDoc``, ``SSwithOneDocOnly``, ``SSwithTwoDoc``, ``SSwithTwoDocOnly``,
  ``SSwithOneFol``, ``SSwithOneDocOneFol``, ``SSwithTwoDocOneFol``,
  ``SSwithTwoDocOneFolOneDocInFol``, ``SSApproved``, ``DocApp``, ``DocDep``,
  ``OneDocApp``, ``OneDocDep``, ``FolApp``, ``FolDep``, ``HasRPLC``, ``HasAPND``,
  ``HasXFRM_RPLC``, ``DocRplcDoc``, ``HasSnapshotPattern``, ``RegistryResponseIsValid``
  (status not Failure; structure via the schema check) and ``DocumentEntries``
  (``MustOnlyInclude``/``Include``/``Exclude`` of ``DocumentEntry`` given by
  ``UseId``, ``DocumentEntryType``).
* ``Assertions``: ``<DataRef file="THIS" as="x"/>`` (the section log so far, shaped
  like the toolkit's ``log.xml``: ``TestResults/TestStep[@id]/<Transaction>/
  {InputMetadata,Result}``) or a file of the test, and ``<Assert id=>XPATH</Assert>``
  which passes when ``string(XPATH)`` is ``true`` (``$DATE$`` = today, UTC;
  ``equalsIgnoreCase`` rewritten as the toolkit does).

Not checked (reported as "not checked" on the step line and counted in the summary):
``Assert`` elements that call simulator plugins (``process=``, ``<Validations>``,
``<SimReference>``: they inspect the toolkit's own simulator logs), ``DataRef`` to
files that do not exist, and any ``ExpectedContents`` element not listed above.
Nor does this runner re-implement the toolkit's metadata validator on responses.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from lxml import etree

from .context import (DE_UNIQUE_ID, FOL_CLASSIFICATION_NODE, FOL_UNIQUE_ID,
                      SS_CLASSIFICATION_NODE, SS_UNIQUE_ID, today)

RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"

STATUS_URNS = {
    "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success": "Success",
    "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure": "Failure",
    "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess": "PartialSuccess",
    # ebRS 3.0 PartialSuccess as some implementations send it
    "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:PartialSuccess": "PartialSuccess",
}
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
APPROVED = "Approved"
DEPRECATED = "Deprecated"
ON_DEMAND_OBJECT_TYPE = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
STABLE_OBJECT_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"

#: Where the IHE XDS.b schema (importing ebRS 3.0) may be found in the checkout.
_SCHEMA_CANDIDATES = [
    Path(__file__).resolve().parents[1] / "schemas" / "ihe-iti" / "schema" / "IHE" / "XDS.b_DocumentRepository.xsd",
    Path(__file__).resolve().parents[1] / "schemas" / "ihe-iti" / "IHE" / "XDS.b_DocumentRepository.xsd",
]


def schema_path() -> Path | None:
    """The XDS.b repository schema (it imports lcm, query, rs and rim 3.0), if present."""
    return next((p for p in _SCHEMA_CANDIDATES if p.exists()), None)


# ------------------------------------------------------------------ outcome

@dataclass
class RegistryError:
    code: str
    context: str
    severity: str
    location: str = ""

    @property
    def is_error(self) -> bool:
        return not self.severity or self.severity.endswith(":Error") or self.severity == "Error"


@dataclass
class Outcome:
    """What came back: a SOAP fault, or a response payload with status and errors."""

    payload: etree._Element | None = None
    status: str | None = None            # raw status attribute
    errors: list[RegistryError] = field(default_factory=list)
    fault: str | None = None             # fault reason when the answer was a SOAP Fault
    action: str | None = None

    @property
    def short_status(self) -> str | None:
        if self.fault is not None:
            return "Fault"
        if self.status is None:
            return None
        return STATUS_URNS.get(self.status, self.status.rsplit(":", 1)[-1])

    @property
    def error_codes(self) -> list[str]:
        return [e.code for e in self.errors]

    def error_summary(self, limit: int = 3) -> str:
        parts = [f"{e.code}: {e.context}".strip(": ") for e in self.errors[:limit]]
        more = len(self.errors) - limit
        if more > 0:
            parts.append(f"(+{more} more)")
        return "; ".join(parts)


def outcome_from_payload(payload: etree._Element, action: str | None = None) -> Outcome:
    """Status and RegistryErrors of a registry/repository response element."""
    out = Outcome(payload=payload, action=action)
    holder = payload
    if payload.get("status") is None:
        # RetrieveDocumentSetResponse and friends wrap an rs:RegistryResponse
        inner = payload.find(f"{{{RS}}}RegistryResponse")
        if inner is not None:
            holder = inner
    out.status = holder.get("status")
    for err in holder.iter(f"{{{RS}}}RegistryError"):
        out.errors.append(RegistryError(
            code=err.get("errorCode", ""),
            context=(err.get("codeContext") or (err.text or "")).strip(),
            severity=err.get("severity", ""),
            location=err.get("location", "")))
    return out


def check_status(expected: list[str], outcome: Outcome) -> list[str]:
    """Failures of the ExpectedStatus check (empty list: it holds)."""
    got = outcome.short_status
    if "Fault" in expected:
        if outcome.fault is not None:
            return []
        return [f"expected a SOAP Fault, got status {got}"
                + (f" ({outcome.error_summary()})" if outcome.errors else "")]
    if outcome.fault is not None:
        return [f"SOAP Fault: {outcome.fault}"]
    if outcome.status is None:
        return ["response has no status attribute"]
    if outcome.status not in STATUS_URNS:
        return [f"status {outcome.status!r} is not a ResponseStatusType URN "
                "(ebRS 3.0 / ITI TF-3 4.2.4)"]
    if got not in expected:
        msg = f"status {got}, expected {' or '.join(expected)}"
        if outcome.errors:
            msg += f" ({outcome.error_summary()})"
        return [msg]
    if expected == ["Success"]:
        errors = [e for e in outcome.errors if e.is_error]
        if errors:
            return [f"status Success but RegistryErrors of severity Error: "
                    f"{Outcome(errors=errors).error_summary()}"]
    return []


def check_error_codes(expected_codes: list[str], outcome: Outcome) -> list[str]:
    if not expected_codes:
        return []
    if outcome.fault is not None:
        return [f"expected error code(s) {', '.join(expected_codes)}, got SOAP Fault: {outcome.fault}"]
    got = outcome.error_codes
    missing = [c for c in expected_codes if c not in got]
    if missing:
        return [f"expected errorCode {', '.join(missing)}, got {', '.join(got) or 'no RegistryError'}"]
    return []


def check_error_messages(expected: list[str], outcome: Outcome) -> list[str]:
    if not expected:
        return []
    texts = [f"{e.code}: {e.context}" for e in outcome.errors]
    if outcome.fault is not None:
        texts.append(outcome.fault)
    missing = [m for m in expected if not any(m in t for t in texts)]
    if missing:
        return [f"expected error message containing {', '.join(repr(m) for m in missing)}, "
                f"got {outcome.error_summary() or 'no RegistryError'}"]
    return []


@lru_cache(maxsize=1)
def _schema() -> etree.XMLSchema | None:
    xsd = schema_path()
    if xsd is None:
        return None
    return etree.XMLSchema(etree.parse(str(xsd)))


def check_schema(payload: etree._Element) -> tuple[list[str], bool]:
    """Schema-validate a response element; (failures, checked)."""
    schema = _schema()
    if schema is None:
        return [], False
    doc = copy.deepcopy(payload)
    if schema.validate(doc):
        return [], True
    err = schema.error_log.last_error
    return [f"response is not schema-valid: line {err.line}: {err.message}"], True


# ------------------------------------------------------------------ metadata view

def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def _simple(value: str | None) -> str:
    return (value or "").rsplit(":", 1)[-1]


class ResponseMetadata:
    """The registry objects of a query response, classified like the toolkit's Metadata."""

    def __init__(self, payload: etree._Element | None) -> None:
        self.extrinsic_objects: list[etree._Element] = []
        self.registry_packages: list[etree._Element] = []
        self.associations: list[etree._Element] = []
        self.object_refs: list[etree._Element] = []
        self.classifications: list[etree._Element] = []
        if payload is None:
            return
        lists = [e for e in payload.iter(f"{{{RIM}}}RegistryObjectList")]
        for rol in lists[:1]:
            for obj in rol:
                if not isinstance(obj.tag, str):
                    continue
                kind = _local(obj)
                if kind == "ExtrinsicObject":
                    self.extrinsic_objects.append(obj)
                elif kind == "RegistryPackage":
                    self.registry_packages.append(obj)
                elif kind == "Association":
                    self.associations.append(obj)
                elif kind == "ObjectRef":
                    self.object_refs.append(obj)
                elif kind == "Classification":
                    self.classifications.append(obj)
        self.submission_sets = [p for p in self.registry_packages
                                if self._is(p, SS_CLASSIFICATION_NODE, SS_UNIQUE_ID)]
        self.folders = [p for p in self.registry_packages
                        if self._is(p, FOL_CLASSIFICATION_NODE, FOL_UNIQUE_ID)]

    def _is(self, pkg: etree._Element, node: str, uid_scheme: str) -> bool:
        pid = pkg.get("id")
        for c in pkg.iter(f"{{{RIM}}}Classification"):
            if c.get("classificationNode") == node:
                return True
        for c in self.classifications:
            if c.get("classificationNode") == node and c.get("classifiedObject") == pid:
                return True
        for ei in pkg.iter(f"{{{RIM}}}ExternalIdentifier"):
            if ei.get("identificationScheme") == uid_scheme:
                return True
        return False

    @property
    def submission_set(self) -> etree._Element | None:
        return self.submission_sets[0] if self.submission_sets else None

    def find_association(self, source: etree._Element | None, targets: list[etree._Element],
                         type_urn: str) -> etree._Element | None:
        if source is None:
            return None
        target_ids = {t.get("id") for t in targets if t is not None}
        for a in self.associations:
            if (a.get("sourceObject") == source.get("id") and a.get("targetObject") in target_ids
                    and a.get("associationType") == type_urn):
                return a
        return None

    def extrinsic_object(self, ident: str) -> etree._Element | None:
        return next((e for e in self.extrinsic_objects if e.get("id") == ident), None)


def _status_is(el: etree._Element | None, status: str) -> bool:
    return el is not None and _simple(el.get("status")) == status


def _describe(el: etree._Element | None) -> str:
    if el is None:
        return "(none)"
    for ei in el.iter(f"{{{RIM}}}ExternalIdentifier"):
        if ei.get("identificationScheme") in (DE_UNIQUE_ID, SS_UNIQUE_ID, FOL_UNIQUE_ID):
            return f"{el.get('id')} (uniqueId {ei.get('value')})"
    return str(el.get("id"))


class _Checker:
    """Accumulates failures like the toolkit's Validator.err()."""

    def __init__(self, m: ResponseMetadata) -> None:
        self.m = m
        self.errors: list[str] = []

    def err(self, msg: str) -> None:
        self.errors.append(msg)

    def count(self, what: str, items: list, n: int) -> bool:
        if len(items) != n:
            self.err(f"found {len(items)} {what} instead of {n}")
            return False
        return True

    def has_ss(self) -> bool:
        if self.m.submission_set is None:
            self.err("no SubmissionSet found")
            return False
        return True

    def no_ss(self) -> None:
        if self.m.submission_sets:
            self.err(f"{len(self.m.submission_sets)} SubmissionSet(s) found, none expected")

    def assoc(self, source, target, type_urn: str = HAS_MEMBER):
        a = self.m.find_association(source, [target], type_urn)
        if a is None:
            self.err(f"{_simple(type_urn)} association missing from {_describe(source)} "
                     f"to {_describe(target)}")
        return a

    def assoc_to_any(self, source, targets, type_urn: str = HAS_MEMBER):
        a = self.m.find_association(source, targets, type_urn)
        if a is None:
            self.err(f"{_simple(type_urn)} association missing from {_describe(source)} to one of "
                     f"{', '.join(_describe(t) for t in targets) or '(nothing)'}")
        return a

    # ---- patterns
    def ss_docs(self, n: int) -> None:
        ok = self.has_ss() & self.count("DocumentEntries", self.m.extrinsic_objects, n) \
            & self.count("Associations", self.m.associations, n)
        if ok:
            for eo in self.m.extrinsic_objects:
                self.assoc(self.m.submission_set, eo)

    def ss_approved(self) -> None:
        ss = self.m.submission_set
        if ss is None:
            self.err("no SubmissionSet")
        elif not _status_is(ss, APPROVED):
            self.err(f"SubmissionSet {ss.get('id')} has status {ss.get('status')} instead of Approved")

    def all_status(self, items, status: str, what: str) -> None:
        for el in items:
            if not _status_is(el, status):
                self.err(f"{what} {el.get('id')} has status {el.get('status')} instead of {status}")
                return

    def exactly_one_status(self, status: str) -> None:
        n = sum(1 for e in self.m.extrinsic_objects if _status_is(e, status))
        if n != 1:
            self.err(f"found {n} {status} DocumentEntries instead of one")

    def unique_relationship(self, simple_type: str) -> None:
        targets = [a.get("targetObject") for a in self.m.associations
                   if _simple(a.get("associationType")) == simple_type]
        if not targets:
            self.err(f"{simple_type} association not found")
        elif len(set(targets)) != len(targets):
            self.err(f"several {simple_type} associations for the same DocumentEntry")

    def ss_with_one_fol(self) -> None:
        ok = self.has_ss() & self.count("DocumentEntries", self.m.extrinsic_objects, 0) \
            & self.count("Folders", self.m.folders, 1)
        if ok and self.count("Associations", self.m.associations, 1):
            self.assoc(self.m.submission_set, self.m.folders[0])

    def ss_with_docs_and_fol(self, ndocs: int, nassocs: int, all_in_folder: bool) -> None:
        ok = self.has_ss() & self.count("DocumentEntries", self.m.extrinsic_objects, ndocs) \
            & self.count("Folders", self.m.folders, 1)
        if not ok:
            return
        self.count("Associations", self.m.associations, nassocs)
        ss, fol, eos = self.m.submission_set, self.m.folders[0], self.m.extrinsic_objects
        for eo in eos:
            self.assoc(ss, eo)
        self.assoc(ss, fol)
        if all_in_folder:
            fd = [a for a in (self.assoc(fol, eo) for eo in eos) if a is not None]
            for a in fd:   # each Folder-DocumentEntry association is a member of the SS
                self.assoc(ss, a)
        else:
            a = self.assoc_to_any(fol, eos)
            if a is not None:
                self.assoc(ss, a)

    def docs_by_use_id(self, mode: str, spec: etree._Element,
                       resolve_use_id: Callable[[etree._Element], str]) -> None:
        matched = 0
        for de in spec:
            if not isinstance(de.tag, str) or _local(de) != "DocumentEntry":
                continue
            found = None
            for instr in de:
                if not isinstance(instr.tag, str):
                    continue
                if _local(instr) == "UseId":
                    ident = resolve_use_id(instr)
                    found = self.m.extrinsic_object(ident)
                    if found is not None:
                        matched += 1
                    if mode in ("MustOnlyInclude", "Include") and found is None:
                        self.err(f"DocumentEntry {ident} is not in the response")
                    elif mode == "Exclude" and found is not None:
                        self.err(f"DocumentEntry {ident} is in the response but must not be")
                elif _local(instr) == "DocumentEntryType":
                    want = (instr.text or "").strip()
                    if found is not None and found.get("objectType") != want:
                        self.err(f"DocumentEntry {found.get('id')} objectType {found.get('objectType')}"
                                 f" instead of {want}")
        if mode == "MustOnlyInclude" and matched != len(self.m.extrinsic_objects):
            self.err(f"response has {len(self.m.extrinsic_objects)} DocumentEntries, "
                     f"{matched} of them expected")

    def snapshot_pattern(self) -> None:
        snaps = [a for a in self.m.associations if _simple(a.get("associationType")) == "IsSnapshotOf"]
        if len(snaps) != 1:
            self.err(f"found {len(snaps)} IsSnapshotOf associations instead of one")
            return
        src = self.m.extrinsic_object(snaps[0].get("sourceObject", ""))
        tgt = self.m.extrinsic_object(snaps[0].get("targetObject", ""))
        if src is None or tgt is None:
            self.err("IsSnapshotOf source or target DocumentEntry is not in the response")
            return
        if not (_status_is(src, APPROVED) and _status_is(tgt, APPROVED)):
            self.err("snapshot or on-demand DocumentEntry is not Approved")
        if tgt.get("objectType") != ON_DEMAND_OBJECT_TYPE:
            self.err("IsSnapshotOf target is not an On-Demand DocumentEntry")
        if src.get("objectType") != STABLE_OBJECT_TYPE:
            self.err("IsSnapshotOf source is not a Stable DocumentEntry")


def check_expected_contents(spec: etree._Element | None, outcome: Outcome,
                            resolve_use_id: Callable[[etree._Element], str] | None = None
                            ) -> tuple[list[str], list[str]]:
    """Evaluate ``<ExpectedContents>``; returns (failures, names not checked)."""
    if spec is None:
        return [], []
    m = ResponseMetadata(outcome.payload)
    c = _Checker(m)
    unchecked: list[str] = []
    for ec in spec:
        if not isinstance(ec.tag, str):
            continue
        name = _local(ec)
        count = ec.get("count")
        try:
            n = int(count) if count is not None else -1
        except ValueError:
            n = -1
        if name in ("Documents", "Folders", "SubmissionSets", "Associations", "ObjectRefs") and n < 0:
            unchecked.append(f"{name}(no count)")
            continue
        if name == "SSwithOneDoc":
            c.ss_docs(1)
            c.ss_approved()
        elif name == "SSwithOneDocOnly":
            c.ss_docs(1)
        elif name == "SSwithTwoDoc":
            c.ss_docs(2)
            c.ss_approved()
        elif name == "SSwithTwoDocOnly":
            c.ss_docs(2)
        elif name == "RegistryResponseIsValid":
            if outcome.short_status == "Failure":
                c.err("response status is Failure")
        elif name == "NoSubmissionSet":
            c.no_ss()
        elif name == "NoDocument":
            c.count("DocumentEntries", m.extrinsic_objects, 0)
        elif name == "SSApproved":
            c.ss_approved()
        elif name == "DocDep":
            c.all_status(m.extrinsic_objects, DEPRECATED, "DocumentEntry")
        elif name == "DocApp":
            c.all_status(m.extrinsic_objects, APPROVED, "DocumentEntry")
        elif name == "FolApp":
            c.all_status(m.folders, APPROVED, "Folder")
        elif name == "FolDep":
            c.all_status(m.folders, DEPRECATED, "Folder")
        elif name == "OneDocDep":
            c.exactly_one_status(DEPRECATED)
        elif name == "OneDocApp":
            c.exactly_one_status(APPROVED)
        elif name == "HasRPLC":
            c.unique_relationship("RPLC")
        elif name == "HasXFRM_RPLC":
            c.unique_relationship("XFRM_RPLC")
        elif name == "HasAPND":
            c.unique_relationship("APND")
        elif name == "DocRplcDoc":
            if c.count("DocumentEntries", m.extrinsic_objects, 2):
                c.count("Associations", m.associations, 1)
                a, b = m.extrinsic_objects
                new, old = (a, b) if _status_is(a, APPROVED) else (b, a)
                c.assoc(new, old, "urn:ihe:iti:2007:AssociationType:RPLC")
                if not _status_is(old, DEPRECATED):
                    c.err(f"replaced DocumentEntry {old.get('id')} is not Deprecated")
        elif name == "SSwithOneFol":
            c.ss_with_one_fol()
        elif name == "SSwithOneDocOneFol":
            c.ss_with_docs_and_fol(1, 4, all_in_folder=True)
        elif name == "SSwithTwoDocOneFol":
            c.ss_with_docs_and_fol(2, 7, all_in_folder=True)
        elif name == "SSwithTwoDocOneFolOneDocInFol":
            c.ss_with_docs_and_fol(2, 5, all_in_folder=False)
        elif name == "None":
            c.no_ss()
            c.count("DocumentEntries", m.extrinsic_objects, 0)
            c.count("Folders", m.folders, 0)
            c.count("Associations", m.associations, 0)
        elif name == "ObjectRefs":
            c.count("ObjectRefs", m.object_refs, n)
            c.no_ss()
            c.count("DocumentEntries", m.extrinsic_objects, 0)
            c.count("Folders", m.folders, 0)
            c.count("Associations", m.associations, 0)
        elif name == "Documents":
            c.count("DocumentEntries", m.extrinsic_objects, n)
        elif name == "Folders":
            c.count("Folders", m.folders, n)
        elif name == "SubmissionSets":
            c.count("SubmissionSets", m.submission_sets, n)
        elif name == "Associations":
            c.count("Associations", m.associations, n)
        elif name == "HasSnapshotPattern":
            c.snapshot_pattern()
        elif name == "DocumentEntries" and resolve_use_id is not None:
            for sel in ec:
                if not isinstance(sel.tag, str):
                    continue
                mode = _local(sel)
                if mode in ("MustOnlyInclude", "Include", "Exclude"):
                    c.docs_by_use_id(mode, sel, resolve_use_id)
                elif mode == "DocumentEntryType":
                    want = (sel.text or "").strip()
                    for eo in m.extrinsic_objects:
                        if eo.get("objectType") != want:
                            c.err(f"DocumentEntry {eo.get('id')} objectType {eo.get('objectType')} "
                                  f"instead of {want}")
                            break
                else:
                    unchecked.append(f"DocumentEntries/{mode}")
        else:
            unchecked.append(name)
    return c.errors, unchecked


# ------------------------------------------------------------------ assertions

@dataclass
class AssertionResult:
    failures: list[str]
    unchecked: list[str]
    checked: int


def _assert_label(a: etree._Element) -> str:
    return a.get("id") or "assert"


def build_data_model(data_refs: list[etree._Element], section_log: etree._Element,
                     base_dirs: list[Path]) -> tuple[etree._Element, list[str]]:
    """The ``<Data>`` element assertions are evaluated on; (data, unavailable refs)."""
    data = etree.Element("Data")
    missing: list[str] = []
    for ref in data_refs:
        file, as_ = ref.get("file", ""), ref.get("as", "")
        if not file or not as_:
            missing.append(f"DataRef(file={file!r}, as={as_!r})")
            continue
        wrapper = etree.SubElement(data, as_)
        if file == "THIS":
            wrapper.append(copy.deepcopy(section_log))
            continue
        for base in base_dirs:
            candidate = base / file
            if candidate.is_file():
                try:
                    parser = etree.XMLParser(resolve_entities=False, no_network=True)
                    wrapper.append(etree.parse(str(candidate), parser).getroot())
                except etree.XMLSyntaxError:
                    missing.append(f"DataRef {file} (not XML)")
                break
        else:
            missing.append(f"DataRef {file}")
    return data, missing


def evaluate_assertions(asserts: list[etree._Element], data_refs: list[etree._Element],
                        section_log: etree._Element, base_dirs: list[Path],
                        substitutions: list[tuple[str, str]]) -> AssertionResult:
    """Run ``<Assert>`` XPath expressions as the toolkit's AssertionEngine does."""
    failures: list[str] = []
    unchecked: list[str] = []
    checked = 0
    if not asserts:
        return AssertionResult([], [], 0)
    data, missing = build_data_model(data_refs, section_log, base_dirs)
    for a in asserts:
        label = _assert_label(a)
        if a.get("process") or any(isinstance(c.tag, str) for c in a):
            kinds = sorted({etree.QName(c).localname for c in a if isinstance(c.tag, str)})
            unchecked.append(f"{label}(simulator validation{': ' + ','.join(kinds) if kinds else ''})")
            continue
        if missing:
            unchecked.append(f"{label}({', '.join(missing)} unavailable)")
            continue
        expr = " ".join((a.text or "").split())
        for old, new in substitutions:
            expr = expr.replace(old, new)
        expr = expr.replace("$DATE$", today())
        if "equalsIgnoreCase" in expr:
            parts = expr.split("equalsIgnoreCase")
            if len(parts) == 2:
                expr = f"{parts[0].lower()} = {parts[1].lower()}"
        try:
            value = str(data.xpath(f"string({expr})"))
        except etree.XPathError as exc:
            failures.append(f"assertion {label}: cannot evaluate XPath ({exc}): {expr}")
            continue
        checked += 1
        if value.lower() != "true":
            failures.append(f"assertion {label} is {value or 'empty'}: {expr}")
    return AssertionResult(failures, unchecked, checked)
