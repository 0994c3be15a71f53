"""Queries on the audit trail: by patient, time range, event, user, entity, outcome.

Every filter is served by an index: times by ``ix_audit_event_time``, event ids by
``ix_audit_event_id``, the multi-valued keys (patient, user, document, submission set,
event type) by ``ix_audit_key`` through ``pk IN (SELECT event_pk ...)``. Results come
newest first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Connection, select

from opendmp.schema import audit_event, audit_key
from registry.hl7types import cx_match_key

from .message import AuditRecord, parse_audit, parse_time
from .store import (
    KEY_DOCUMENT,
    KEY_EVENT_TYPE,
    KEY_NAP,
    KEY_PATIENT,
    KEY_SUBMISSION_SET,
    KEY_USER,
)

MAX_RESULTS = 1000


@dataclass
class AuditQuery:
    """All filters are ANDed; a list means any of its values."""

    patients: list[str] = field(default_factory=list)
    #: microseconds since the epoch; ``since`` inclusive, ``until`` exclusive.
    since: int | None = None
    until: int | None = None
    event_ids: list[str] = field(default_factory=list)
    event_types: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    #: a document uniqueId, a submission set uniqueId, or any other object id
    entities: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    outcomes: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    limit: int = 100
    offset: int = 0


@dataclass
class StoredAudit:
    pk: int
    received_at: int
    transport: str
    peer: str | None
    valid: bool
    record: AuditRecord


def parse_when(value: str, upper: bool = False) -> int:
    """A date or dateTime (``2026-11-28``, ``2026-11-28T10:00:00Z``) in microseconds.

    With ``upper``, a bare date means the end of that day (exclusive bound: next midnight).
    """
    value = value.strip()
    if len(value) == 10:  # YYYY-MM-DD
        dt = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        micros = int(dt.timestamp()) * 1_000_000
        return micros + (86_400_000_000 if upper else 0)
    return parse_time(value)


def _key_filter(kind: int | tuple[int, ...], values: list[str]):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return audit_event.c.pk.in_(
        select(audit_key.c.event_pk).where(audit_key.c.kind.in_(kinds),
                                           audit_key.c.value.in_(values)))


def build_select(q: AuditQuery):
    stmt = select(audit_event.c.pk, audit_event.c.received_at, audit_event.c.transport,
                  audit_event.c.peer, audit_event.c.valid, audit_event.c.xml)
    if q.since is not None:
        stmt = stmt.where(audit_event.c.event_time >= q.since)
    if q.until is not None:
        stmt = stmt.where(audit_event.c.event_time < q.until)
    if q.event_ids:
        stmt = stmt.where(audit_event.c.event_id.in_(q.event_ids))
    if q.outcomes:
        stmt = stmt.where(audit_event.c.outcome.in_(q.outcomes))
    if q.sources:
        stmt = stmt.where(audit_event.c.source_id.in_(q.sources))
    if q.patients:
        stmt = stmt.where(_key_filter(KEY_PATIENT, [cx_match_key(p) for p in q.patients]))
    if q.event_types:
        stmt = stmt.where(_key_filter(KEY_EVENT_TYPE, q.event_types))
    if q.users:
        stmt = stmt.where(_key_filter(KEY_USER, q.users))
    if q.addresses:
        stmt = stmt.where(_key_filter(KEY_NAP, q.addresses))
    if q.entities:
        stmt = stmt.where(_key_filter((KEY_DOCUMENT, KEY_SUBMISSION_SET, KEY_PATIENT),
                                      [*q.entities, *(cx_match_key(e) for e in q.entities if "^" in e)]))
    limit = max(1, min(q.limit, MAX_RESULTS))
    return (stmt.order_by(audit_event.c.event_time.desc(), audit_event.c.pk.desc())
            .limit(limit).offset(max(0, q.offset)))


def run_query(conn: Connection, q: AuditQuery) -> list[StoredAudit]:
    out = []
    for pk, received_at, transport, peer, valid, xml in conn.execute(build_select(q)):
        record = parse_audit(bytes(xml), validate=False)
        out.append(StoredAudit(pk, received_at, transport, peer, bool(valid), record))
    return out


def iso(micros: int) -> str:
    dt = datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(item: StoredAudit, with_xml: bool = False) -> dict:
    """The JSON form of ``GET /audit`` and ``opendmp audit list --json``."""
    rec = item.record
    out = {
        "id": item.pk,
        "time": iso(rec.event_time),
        "received": iso(item.received_at),
        "event": {"code": rec.event_id.code, "system": rec.event_id.system,
                  "display": rec.event_id.display},
        "types": [{"code": c.code, "system": c.system, "display": c.display}
                  for c in rec.event_types],
        "action": rec.action,
        "outcome": rec.outcome,
        "participants": [
            {"userId": p.user_id, "altUserId": p.alt_user_id, "userName": p.user_name,
             "requestor": p.is_requestor, "roles": [r.code for r in p.roles],
             "networkAccessPoint": p.network_access_point}
            for p in rec.participants],
        "source": rec.source_id,
        "patients": rec.patient_ids,
        "documents": rec.document_ids,
        "submissionSets": rec.submission_set_ids,
        "transport": item.transport,
        "peer": item.peer,
        "schemaValid": item.valid,
    }
    if with_xml:
        out["xml"] = rec.xml.decode("utf-8", "replace")
    return out
