"""The DICOM PS3.15 Annex A.5 audit message (and its RFC 3881 ancestor) as a typed record.

``parse_audit(xml)`` reads an ``AuditMessage`` into an :class:`AuditRecord` whose fields are
the ones the repository indexes (event, outcome, time, active participants, source, patient
ids, document and submission set ids) and validates it against the DICOM schema
(``schemas/audit/dicom2017c.xsd``). The RFC 3881 form (``code``/``displayName`` attributes
instead of DICOM's ``csd-code``/``originalText``) is read the same way; such messages do not
validate against the DICOM schema, and are kept with ``schema_errors`` set (see
:mod:`atna.receiver` for the policy: an ARR keeps every audit message it can read).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from lxml import etree

from soapstack.xml import XmlRejected, parse_xml

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "audit" / "dicom2017c.xsd"

#: ParticipantObjectTypeCode / ...TypeCodeRole values (DICOM PS3.15 A.5.3, RFC 3881 §5.5).
PO_PERSON, PO_SYSTEM = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_JOB, ROLE_QUERY = "1", "3", "20", "24"
#: ParticipantObjectIDTypeCode of an XDS SubmissionSet (ITI TF-2b §3.42.6.1.1).
SUBMISSION_SET_CLASS = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"


class NotAnAuditMessage(ValueError):
    """The payload is not an XML ``AuditMessage`` at all (a non-audit syslog payload)."""


@dataclass(frozen=True)
class Code:
    code: str
    system: str | None = None
    display: str | None = None


@dataclass(frozen=True)
class Participant:
    user_id: str
    alt_user_id: str | None
    user_name: str | None
    is_requestor: bool
    roles: tuple[Code, ...]
    network_access_point: str | None
    network_access_point_type: str | None


@dataclass(frozen=True)
class ParticipantObject:
    object_id: str
    type_code: str | None
    role: str | None
    id_type: Code | None
    name: str | None
    query: str | None
    details: tuple[tuple[str, str], ...]


@dataclass
class AuditRecord:
    event_id: Code
    action: str | None
    outcome: int
    #: event time, microseconds since the epoch (UTC); a time without offset is taken as UTC.
    event_time: int
    event_types: tuple[Code, ...]
    purposes: tuple[Code, ...]
    participants: tuple[Participant, ...]
    source_id: str | None
    source_site: str | None
    source_types: tuple[str, ...]
    objects: tuple[ParticipantObject, ...]
    xml: bytes
    #: first schema errors (empty when valid against the DICOM schema).
    schema_errors: list[str] = field(default_factory=list)
    outcome_description: str | None = None

    @property
    def valid(self) -> bool:
        return not self.schema_errors

    @property
    def patient_ids(self) -> list[str]:
        return [o.object_id for o in self.objects
                if o.type_code == PO_PERSON and o.role == ROLE_PATIENT]

    @property
    def document_ids(self) -> list[str]:
        return [o.object_id for o in self.objects
                if o.type_code == PO_SYSTEM and o.role == ROLE_REPORT]

    @property
    def submission_set_ids(self) -> list[str]:
        return [o.object_id for o in self.objects
                if o.role == ROLE_JOB or (o.id_type and o.id_type.code == SUBMISSION_SET_CLASS)]

    @property
    def user_ids(self) -> list[str]:
        out = []
        for p in self.participants:
            out.append(p.user_id)
            if p.alt_user_id:
                out.append(p.alt_user_id)
        return out


@lru_cache(maxsize=1)
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


def schema_errors(root: etree._Element, limit: int = 50) -> list[str]:
    schema = _schema()
    if schema.validate(root):
        return []
    return [f"line {e.line}: {e.message}" for e in list(schema.error_log)[:limit]]


def _code(el: etree._Element | None) -> Code | None:
    if el is None:
        return None
    code = el.get("csd-code") or el.get("code") or (el.text or "").strip()
    return Code(code, el.get("codeSystemName") or el.get("codeSystem"),
                el.get("originalText") or el.get("displayName"))


def parse_time(value: str | None) -> int:
    """xs:dateTime to microseconds since the epoch (UTC); any fraction length accepted."""
    if not value:
        raise ValueError("EventDateTime is missing")
    v = value.strip().replace("z", "Z")
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    # Python < 3.11-safe: cut fractions to microseconds (IPF sends nanoseconds).
    if "." in v:
        head, _, tail = v.partition(".")
        digits = ""
        while tail and tail[0].isdigit():
            digits, tail = digits + tail[0], tail[1:]
        v = f"{head}.{(digits + '000000')[:6]}{tail}"
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


def _local(tag) -> str:
    if not isinstance(tag, str):  # comments, processing instructions
        return ""
    return tag.rpartition("}")[2] if tag[0] == "{" else tag


def _codes(el: etree._Element, name: str) -> tuple[Code, ...]:
    # the tag filter runs in lxml (C): no Python call per child (hot: ARR ingest)
    return tuple(c for c in map(_code, el.iterchildren("{*}" + name)) if c)


def _audit_root(data: bytes) -> etree._Element:
    try:
        root = parse_xml(data)
    except XmlRejected as exc:
        raise NotAnAuditMessage(str(exc)) from None
    if _local(root.tag) != "AuditMessage":
        raise NotAnAuditMessage(f"root element is {_local(root.tag)}, not AuditMessage")
    return root


def _event_time(ei: etree._Element) -> int:
    try:
        return parse_time(ei.get("EventDateTime"))
    except ValueError as exc:
        raise NotAnAuditMessage(f"EventDateTime: {exc}") from None


def _outcome(ei: etree._Element) -> int:
    try:
        return int(ei.get("EventOutcomeIndicator") or 0)
    except ValueError:
        return -1


@dataclass(slots=True)
class AuditIndex:
    """What the repository indexes of one audit message (:mod:`atna.store`), read at ingest
    by :func:`read_index`; equal to what the same fields of :func:`parse_audit`'s record
    give (the full record is rebuilt from the stored XML when a query returns it)."""

    event_id: str
    action: str | None
    outcome: int
    event_time: int
    event_types: list[str]
    source_id: str | None
    user_ids: list[str]
    network_access_points: list[str]
    patient_ids: list[str]
    document_ids: list[str]
    submission_set_ids: list[str]
    xml: bytes
    schema_errors: list[str]

    @property
    def valid(self) -> bool:
        return not self.schema_errors


def _code_value(el: etree._Element) -> str:
    return el.get("csd-code") or el.get("code") or (el.text or "").strip()


def read_index(data: bytes, validate: bool = True) -> AuditIndex:
    """The indexed fields of an audit message, accepting and refusing exactly what
    :func:`parse_audit` does (:class:`NotAnAuditMessage`), without building the typed
    record: one pass over the root's children reading attributes only. This runs for
    every message the ARR receives (ITI TF-2a §3.20.4.1.3), so it is kept lean; a test
    checks it against :func:`parse_audit` on the corpus."""
    root = _audit_root(data)
    ei = src = None
    users: list[str] = []
    naps: list[str] = []
    patients: list[str] = []
    documents: list[str] = []
    sets: list[str] = []
    for child in root:
        tag = child.tag
        if not isinstance(tag, str):  # comments, processing instructions
            continue
        if tag[0] == "{":
            tag = tag.rpartition("}")[2]
        if tag == "ActiveParticipant":
            get = child.get
            users.append(get("UserID") or "")
            alt = get("AlternativeUserID")
            if alt:
                users.append(alt)
            nap = get("NetworkAccessPointID")
            if nap:
                naps.append(nap)
        elif tag == "ParticipantObjectIdentification":
            get = child.get
            object_id = get("ParticipantObjectID") or ""
            type_code = get("ParticipantObjectTypeCode")
            role = get("ParticipantObjectTypeCodeRole")
            if type_code == PO_PERSON and role == ROLE_PATIENT:
                patients.append(object_id)
            elif type_code == PO_SYSTEM and role == ROLE_REPORT:
                documents.append(object_id)
            if role == ROLE_JOB:
                sets.append(object_id)
            else:
                id_type = None  # the last one, as parse_audit reads it
                for id_type in child.iterchildren("{*}ParticipantObjectIDTypeCode"):
                    pass
                if id_type is not None and _code_value(id_type) == SUBMISSION_SET_CLASS:
                    sets.append(object_id)
        elif tag == "EventIdentification":
            ei = child
        elif tag == "AuditSourceIdentification":
            src = child
    if ei is None:
        raise NotAnAuditMessage("AuditMessage without EventIdentification")
    event_id = ""
    for first in ei.iterchildren("{*}EventID"):
        event_id = _code_value(first)
        break
    if not event_id:
        raise NotAnAuditMessage("AuditMessage without EventID")
    return AuditIndex(
        event_id=event_id, action=ei.get("EventActionCode"), outcome=_outcome(ei),
        event_time=_event_time(ei),
        event_types=[_code_value(c) for c in ei.iterchildren("{*}EventTypeCode")],
        source_id=src.get("AuditSourceID") if src is not None else None,
        user_ids=users, network_access_points=naps, patient_ids=patients,
        document_ids=documents, submission_set_ids=sets, xml=data,
        schema_errors=schema_errors(root) if validate else [])


def parse_audit(data: bytes, validate: bool = True) -> AuditRecord:
    """Read an audit message; raises :class:`NotAnAuditMessage` for anything else.

    One pass over the root's children."""
    root = _audit_root(data)

    ei = src = None
    participants: list[Participant] = []
    objects: list[ParticipantObject] = []
    for child in root:
        name = _local(child.tag)
        if name == "EventIdentification":
            ei = child
        elif name == "ActiveParticipant":
            get = child.get
            participants.append(Participant(
                user_id=get("UserID") or "",
                alt_user_id=get("AlternativeUserID"),
                user_name=get("UserName"),
                is_requestor=_bool(get("UserIsRequestor")),
                roles=_codes(child, "RoleIDCode"),
                network_access_point=get("NetworkAccessPointID"),
                network_access_point_type=get("NetworkAccessPointTypeCode"),
            ))
        elif name == "AuditSourceIdentification":
            src = child
        elif name == "ParticipantObjectIdentification":
            id_type = query = po_name = None
            details = []
            for sub in child:
                sname = _local(sub.tag)
                if sname == "ParticipantObjectIDTypeCode":
                    id_type = _code(sub)
                elif sname == "ParticipantObjectQuery":
                    query = (sub.text or "").strip()
                elif sname == "ParticipantObjectName":
                    po_name = sub.text
                elif sname == "ParticipantObjectDetail":
                    details.append((sub.get("type") or "", sub.get("value") or ""))
            objects.append(ParticipantObject(
                object_id=child.get("ParticipantObjectID") or "",
                type_code=child.get("ParticipantObjectTypeCode"),
                role=child.get("ParticipantObjectTypeCodeRole"),
                id_type=id_type, name=po_name, query=query, details=tuple(details)))

    if ei is None:
        raise NotAnAuditMessage("AuditMessage without EventIdentification")
    event_ids, event_types, purposes = [], [], []
    description = None
    for sub in ei:  # one pass (hot: every message the ARR receives)
        sname = _local(sub.tag)
        if sname == "EventID":
            event_ids.append(_code(sub))
        elif sname == "EventTypeCode":
            event_types.append(_code(sub))
        elif sname == "PurposeOfUse":
            purposes.append(_code(sub))
        elif sname == "EventOutcomeDescription":
            description = " ".join((sub.text or "").split())
    if not event_ids or not event_ids[0].code:
        raise NotAnAuditMessage("AuditMessage without EventID")
    event_time = _event_time(ei)
    outcome = _outcome(ei)

    return AuditRecord(
        event_id=event_ids[0],
        action=ei.get("EventActionCode"),
        outcome=outcome,
        event_time=event_time,
        event_types=tuple(event_types),
        purposes=tuple(purposes),
        participants=tuple(participants),
        source_id=src.get("AuditSourceID") if src is not None else None,
        source_site=src.get("AuditEnterpriseSiteID") if src is not None else None,
        source_types=tuple(c.code for c in _codes(src, "AuditSourceTypeCode")) if src is not None else (),
        objects=tuple(objects),
        xml=data,
        schema_errors=schema_errors(root) if validate else [],
        outcome_description=description,
    )
