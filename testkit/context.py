"""Id and report bookkeeping across steps, sections and tests (the toolkit's "linkage").

What the NIST toolkit does to a metadata file before sending it, in this order
(``BasicTransaction.prepareMetadata``), and how this module does it:

1. ``UseReport`` -- replace ``useAs`` by the value a previous step *reported*
   (``test``/``section``/``step``/``reportName``; section ``THIS`` is the current
   one).  Reports are produced by ``<Report name= section=>XPATH</Report>``
   evaluated on the step's request (``InputMetadata``) or response (``Result``),
   by ``AssignUuids``/uniqueId assignment (``<symbol>_uuid`` / ``<symbol>_uid``)
   and by patient identity feeds (``$patientid$``).  A report is only published
   when its step passed, as in the toolkit.
2. Patient id assignment (unless ``NoPatientId``): the value of every
   ``XDSDocumentEntry.patientId``, ``XDSSubmissionSet.patientId`` and
   ``XDSFolder.patientId`` ExternalIdentifier becomes the test's patient id;
   logged as ``AssignedPatientId`` (object id -> patient id).
3. ``UseId`` -- replace ``symbol`` by the value a previous step assigned to object
   ``id`` in its log section ``AssignedUuids``, ``AssignedUids``,
   ``AssignedPatientId`` or ``AssignedSourceId`` (``testdir`` relative to the
   current section directory; absent means the current section).
4. uniqueId assignment (unless ``NoAssignUids``; ``NoAssignUids id=X`` spares
   object X): every DocumentEntry/SubmissionSet/Folder uniqueId gets a fresh OID
   (``2.25.<uuid>``, ITU-T X.667); logged as ``AssignedUids``.
5. ``AssignedSourceId`` is logged with the submission set's sourceId (the toolkit
   would substitute its own configured source OID; this runner keeps the file's).
6. ``AssignUuids`` -- every symbolic ``id`` (not ``urn:uuid:``) becomes a fresh
   UUID and every ``classifiedObject``/``sourceObject``/``targetObject``/
   ``registryObject`` reference follows; logged as ``AssignedUuids``.
7. ``UseXPath``, ``UseObjectRef``, ``UseRepositoryUniqueId`` and the standard
   linkage (``$now$``, ``$lastyear$``, ``$DATE$`` in assertions).

Replacement is plain substring replacement in text and attribute values, like the
toolkit's ``Linkage.replace_string_in_text_and_attributes`` (which also skips
``Report``/``UseReport``/``UseId`` elements and the content of ``xdsb:Document``).
Any ``$name$`` placeholder still present afterwards makes the step FAIL: a request
carrying an unresolved placeholder proves nothing about the system under test.

Patient ids: the toolkit allocates one patient id per patient identity feed test
(15817 for Register tests, 15818 for Stored Query tests, 15817b, ...).  This runner
does the same: a feed step without ``CreateNewPatientId`` uses the id given with
``--patient-id TEST=CX`` or ``--patient-id CX``, otherwise a fresh
``<random>^^^&<authority>&ISO``; every new id goes through the patient feed before
use.  A test's *current* patient id (used by patient id assignment) is the one its
own feed step or a ``UseReport`` of ``$patientid$`` established, else a fresh id
allocated for that test.
"""
from __future__ import annotations

import copy
import datetime as _dt
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lxml import etree

from .plan import ANONYMOUS_SECTION, UseId, UseReport

XDSB = "urn:ihe:iti:xds-b:2007"

#: ExternalIdentifier identificationScheme UUIDs (ITI TF-3 4.2.5)
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
FOL_PATIENT_ID = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FOL_UNIQUE_ID = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"
SS_CLASSIFICATION_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOL_CLASSIFICATION_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"

PATIENT_ID_SCHEMES = (DE_PATIENT_ID, SS_PATIENT_ID, FOL_PATIENT_ID)
UNIQUE_ID_SCHEMES = (DE_UNIQUE_ID, SS_UNIQUE_ID, FOL_UNIQUE_ID)

#: NIST's default patient identifier assigning authority (toolkit default environment).
DEFAULT_ASSIGNING_AUTHORITY = "1.3.6.1.4.1.21367.2005.13.20.1000"

#: Attributes holding references to other registry objects (IdParser).
REFERENCE_ATTRIBUTES = ("classifiedObject", "sourceObject", "targetObject", "registryObject")

PLACEHOLDER = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\$")

#: Toolkit instruction elements never rewritten by linkage.
_NO_REPLACE = {"Report", "UseReport", "UseId"}


class DependencyError(Exception):
    """A UseId/UseReport/... points to a step that has not run, failed, or lacks the value.

    ``skipped`` is set when the step it needs was skipped by this runner: the dependent
    step is then SKIPped too (the system under test is not at fault)."""

    def __init__(self, message: str, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped


class LinkageError(Exception):
    """The metadata cannot be prepared (undefined symbolic id, unresolved placeholder...)."""


# ------------------------------------------------------------------ text substitution

def _local(el: etree._Element) -> str:
    return etree.QName(el).localname


def replace_in_tree(root: etree._Element, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` in text and attribute values below ``root``.

    Skips toolkit instruction elements (Report, UseReport, UseId) and the content of
    ``xdsb:Document``.  Returns the number of values changed.
    """
    if not old:
        return 0
    changed = 0

    def walk(el: etree._Element) -> None:
        nonlocal changed
        if not isinstance(el.tag, str):
            return
        q = etree.QName(el)
        if q.localname in _NO_REPLACE and not q.namespace:
            return
        if q.localname == "Document" and q.namespace == XDSB:
            return
        if el.text and old in el.text:
            el.text = el.text.replace(old, new)
            changed += 1
        for name, value in el.attrib.items():
            if old in value:
                el.set(name, value.replace(old, new))
                changed += 1
        for child in el:
            walk(child)
            if child.tail and old in child.tail:
                child.tail = child.tail.replace(old, new)
                changed += 1

    walk(root)
    return changed


def find_placeholders(root: etree._Element) -> list[str]:
    """``$name$`` tokens left in text or attributes (outside ``xdsb:Document``)."""
    found: list[str] = []

    def walk(el: etree._Element) -> None:
        if not isinstance(el.tag, str):
            return
        q = etree.QName(el)
        if q.localname == "Document" and q.namespace == XDSB:
            return
        values = [el.text or "", el.tail or "", *el.attrib.values()]
        for v in values:
            for m in PLACEHOLDER.findall(v):
                if m not in found:
                    found.append(m)
        for child in el:
            walk(child)

    walk(root)
    return found


# ------------------------------------------------------------------ metadata helpers

def registry_objects(root: etree._Element, localname: str) -> list[etree._Element]:
    return [e for e in root.iter() if isinstance(e.tag, str) and _local(e) == localname]


def external_identifiers(obj: etree._Element, scheme: str) -> list[etree._Element]:
    return [c for c in obj if isinstance(c.tag, str) and _local(c) == "ExternalIdentifier"
            and c.get("identificationScheme") == scheme]


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def new_unique_id() -> str:
    """A fresh OID under the UUID arc 2.25 (ITU-T X.667), at most 44 characters."""
    return f"2.25.{uuid.uuid4().int}"


def assign_patient_id(root: etree._Element, pid: str) -> dict[str, str]:
    """Set every DE/SS/Folder patientId ExternalIdentifier to ``pid``; object id -> pid."""
    assigned: dict[str, str] = {}
    for kind in ("ExtrinsicObject", "RegistryPackage"):
        for obj in registry_objects(root, kind):
            for scheme in PATIENT_ID_SCHEMES:
                for ei in external_identifiers(obj, scheme):
                    ei.set("value", pid)
                    assigned[obj.get("id", "")] = pid
    return assigned


def assign_unique_ids(root: etree._Element, spare: str | None = None) -> dict[str, str]:
    """Fresh uniqueIds for every DE/SS/Folder (but object ``spare``); object id -> uid."""
    assigned: dict[str, str] = {}
    for kind in ("ExtrinsicObject", "RegistryPackage"):
        for obj in registry_objects(root, kind):
            oid = obj.get("id", "")
            if spare is not None and oid == spare:
                continue
            for scheme in UNIQUE_ID_SCHEMES:
                for ei in external_identifiers(obj, scheme):
                    uid = new_unique_id()
                    ei.set("value", uid)
                    assigned[oid] = uid
    return assigned


def source_ids(root: etree._Element) -> dict[str, str]:
    """Submission set id -> sourceId value (AssignedSourceId)."""
    out: dict[str, str] = {}
    for obj in registry_objects(root, "RegistryPackage"):
        for ei in external_identifiers(obj, SS_SOURCE_ID):
            out[obj.get("id", "")] = ei.get("value", "")
    return out


def assign_uuids(root: etree._Element) -> dict[str, str]:
    """Replace symbolic ids by fresh UUIDs and update references (IdParser); symbol -> uuid.

    Raises :class:`LinkageError` when a reference names a symbolic id that the
    metadata does not define.
    """
    mapping: dict[str, str] = {}
    for el in root.iter():
        if not isinstance(el.tag, str) or etree.QName(el).namespace == XDSB:
            continue
        ident = el.get("id")
        if ident is None or ident.startswith("urn:uuid:") or not etree.QName(el).namespace:
            continue
        if _local(el) == "AdhocQuery":
            continue
        if ident not in mapping:
            mapping[ident] = new_uuid()
        el.set("id", mapping[ident])
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for attr in REFERENCE_ATTRIBUTES:
            value = el.get(attr)
            if value is None or value.startswith("urn:uuid:"):
                continue
            if value not in mapping:
                raise LinkageError(f"metadata refers to symbolic id {value!r} ({attr}) "
                                   "that it does not define")
            el.set(attr, mapping[value])
    return mapping


def xpath_string(root: etree._Element, expr: str) -> str:
    """XPath 1.0 ``string(expr)`` on a standalone copy of ``root`` (toolkit stringValueOf)."""
    doc = etree.ElementTree(copy.deepcopy(root))
    return str(doc.getroot().xpath(f"string({expr})"))


# ------------------------------------------------------------------ step records

@dataclass
class StepRecord:
    """What a step left behind for later steps (the toolkit's log.xml for that step)."""

    test: str
    section: str
    step: str
    kind: str
    #: PASS, FAIL or SKIP (as reported)
    status: str
    #: may later steps use its ids and reports? (PASS, or a SKIP that still produced them)
    usable: bool
    assigned: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    request: etree._Element | None = None
    result: etree._Element | None = None

    @property
    def label(self) -> str:
        return f"{self.test}/{self.section}/{self.step}"


def step_log_element(record: StepRecord) -> etree._Element:
    """``<TestStep id=..><Kind><InputMetadata/><Result/><Assigned.../></Kind></TestStep>``
    -- the shape of a toolkit log entry, so plan XPath assertions find their nodes."""
    step_el = etree.Element("TestStep", id=record.step)
    tx = etree.SubElement(step_el, record.kind or "NullTransaction")
    if record.request is not None:
        etree.SubElement(tx, "InputMetadata").append(copy.deepcopy(record.request))
    if record.result is not None:
        etree.SubElement(tx, "Result").append(copy.deepcopy(record.result))
    for section, values in record.assigned.items():
        sec = etree.SubElement(tx, section)
        for sym, val in values.items():
            etree.SubElement(sec, "Assign", symbol=sym, id=val)
    etree.SubElement(tx, "StepStatus").text = "Success" if record.status == "PASS" else "Failure"
    return step_el


# ------------------------------------------------------------------ patient ids

@dataclass
class FeedOutcome:
    """Result of sending one patient id through the patient feed."""

    sent: bool            # False: feed disabled (``none``)
    ok: bool
    message: str


class PatientIds:
    """Allocation of patient ids (CX) and their feeding, once per id per run."""

    def __init__(self, feed: Callable[[str], FeedOutcome], authority: str = DEFAULT_ASSIGNING_AUTHORITY,
                 default_id: str | None = None, per_test: dict[str, str] | None = None) -> None:
        self.feed = feed
        self.authority = authority
        self.default_id = default_id
        self.per_test = dict(per_test or {})
        self._by_test: dict[str, str] = {}
        self._fed: dict[str, FeedOutcome] = {}

    def generate(self) -> str:
        return f"{uuid.uuid4().hex[:16].upper()}^^^&{self.authority}&ISO"

    def for_feed_test(self, test: str, create_new: bool = False) -> str:
        """The id a patient identity feed step of ``test`` announces."""
        if create_new:
            pid = self.generate()
        else:
            pid = self.per_test.get(test) or self.default_id or self.generate()
        self._by_test[test] = pid
        return pid

    def current(self, test: str) -> str | None:
        return self._by_test.get(test)

    def establish(self, test: str, pid: str) -> None:
        """``pid`` becomes the current patient id of ``test`` (e.g. from UseReport)."""
        self._by_test[test] = pid

    def for_test(self, test: str) -> tuple[str, FeedOutcome | None]:
        """Current patient id of ``test``, allocating (and feeding) one if needed."""
        pid = self._by_test.get(test)
        if pid is not None:
            return pid, None
        pid = self.per_test.get(test) or self.default_id or self.generate()
        self._by_test[test] = pid
        return pid, self.ensure_fed(pid)

    def ensure_fed(self, pid: str) -> FeedOutcome:
        """Feed ``pid`` unless it already went through the feed in this run."""
        if pid not in self._fed:
            self._fed[pid] = self.feed(pid)
        return self._fed[pid]

    def was_fed(self, pid: str) -> FeedOutcome | None:
        return self._fed.get(pid)


# ------------------------------------------------------------------ run context

class RunContext:
    """Everything shared by the tests of one run: step records, section logs, patient ids."""

    def __init__(self, patients: PatientIds) -> None:
        self.patients = patients
        self.records: dict[tuple[str, str, str], StepRecord] = {}
        #: section directory -> (test, section), for ``testdir=`` references
        self.section_dirs: dict[Path, tuple[str, str]] = {}
        #: test directory -> test name
        self.test_dirs: dict[Path, str] = {}
        #: (test, section) -> ordered step ids run so far
        self.section_steps: dict[tuple[str, str], list[str]] = {}
        self.started_sections: set[tuple[str, str]] = set()
        self.started_tests: set[str] = set()

    # ---- registration of what runs

    def register_test(self, name: str, path: Path, sections: list[tuple[str, Path]]) -> None:
        self.test_dirs[path.resolve()] = name
        for sec_name, sec_path in sections:
            self.section_dirs[sec_path.resolve()] = (name, sec_name)

    def begin_section(self, test: str, section: str) -> None:
        self.started_tests.add(test)
        self.started_sections.add((test, section))
        # a section that is run again starts a fresh log (toolkit overwrites log.xml)
        for key in [k for k in self.records if k[0] == test and k[1] == section]:
            del self.records[key]
        self.section_steps[(test, section)] = []

    def add_record(self, record: StepRecord) -> None:
        self.records[(record.test, record.section, record.step)] = record
        self.section_steps.setdefault((record.test, record.section), []).append(record.step)

    def section_log(self, test: str, section: str) -> etree._Element:
        """The section's log so far: ``<TestResults><TestStep id=..>...</TestResults>``."""
        root = etree.Element("TestResults", test=test, section=section)
        for step in self.section_steps.get((test, section), []):
            rec = self.records.get((test, section, step))
            if rec is not None:
                root.append(step_log_element(rec))
        return root

    # ---- lookups

    def record(self, test: str, section: str, step: str) -> StepRecord:
        """The record of a step that ran and passed, else :class:`DependencyError`."""
        label = f"{test}/{section}/{step}"
        rec = self.records.get((test, section, step))
        if rec is None:
            if (test, section) in self.started_sections:
                raise DependencyError(f"depends on {label} which has not run (no such step in that section)")
            raise DependencyError(f"depends on {label} which has not run")
        if rec.usable:
            return rec
        if rec.status == "SKIP":
            raise DependencyError(f"depends on {label} which was skipped", skipped=True)
        raise DependencyError(f"depends on {label} which failed")

    def resolve_testdir(self, testdir: str | None, section_path: Path,
                        test: str, section: str) -> tuple[str, str]:
        """(test, section) named by a ``testdir`` attribute relative to ``section_path``."""
        if not testdir:
            return test, section
        candidates = [(section_path / testdir).resolve(), (section_path.parent / testdir).resolve()]
        for target in candidates:
            if target in self.section_dirs:
                return self.section_dirs[target]
            if target in self.test_dirs:
                return self.test_dirs[target], ANONYMOUS_SECTION
        target = candidates[0]
        # not part of this run: name it from the path (../../12346/single_doc)
        if (target.parent / "index.idx").exists():
            raise DependencyError(f"depends on {target.parent.name}/{target.name} which has not run")
        raise DependencyError(f"depends on {target.name} (testdir {testdir}) which has not run")

    def resolve_use_id(self, use: UseId, section_path: Path, test: str, section: str) -> str:
        if use.value:
            return use.value
        if not (use.id and use.step and use.section and use.symbol):
            raise LinkageError(f"UseId {use.symbol!r} lacks id, step, section or symbol")
        t, s = self.resolve_testdir(use.testdir, section_path, test, section)
        rec = self.record(t, s, use.step)
        values = rec.assigned.get(use.section)
        if values is None:
            raise DependencyError(f"{rec.label} has no {use.section} (needed for {use.symbol})")
        if use.id not in values:
            raise DependencyError(f"{rec.label} {use.section} has no id {use.id!r} (needed for {use.symbol})")
        return values[use.id]

    def resolve_use_report(self, use: UseReport, test: str, section: str) -> str:
        t = use.test or test
        s = section if use.section == "THIS" else use.section
        rec = self.record(t, s, use.step)
        if use.report_name not in rec.reports:
            raise DependencyError(f"{rec.label} did not report {use.report_name!r} (needed for {use.use_as})")
        value = rec.reports[use.report_name]
        if value == "":
            raise DependencyError(f"{rec.label} reported an empty {use.report_name!r} (needed for {use.use_as})")
        return value


def today() -> str:
    """``$DATE$`` of toolkit assertions: today's date as YYYYMMDD (UTC, as XDS times are)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d")


def hl7_now(delta_days: int = 0) -> str:
    """``$now$`` / ``$lastyear$``: an HL7 DTM (UTC) ``YYYYMMDDhhmmss``."""
    t = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=delta_days)
    return t.strftime("%Y%m%d%H%M%S")
