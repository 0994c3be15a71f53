"""Registry persistence: model objects <-> rows of opendmp.schema (one row per object).

Everything here runs inside a transaction the caller opened (opendmp.db); nothing
commits on its own, so a transaction's objects land together or not at all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Iterable, NamedTuple

from lxml import etree
from sqlalchemy import Connection, bindparam, insert, or_, select, update

from opendmp.db import pg_execute
from opendmp.schema import object_key, patient, registry_object

from . import vocabulary as V
from .ebrim import to_element
from .hl7types import HL7TypeError, parse_dtm
from .model import Association, DocumentEntry, Folder, RegistryObject, SubmissionSet


class Kind(IntEnum):
    """registry_object.kind"""

    STABLE_DOCUMENT = 1
    ON_DEMAND_DOCUMENT = 2
    SUBMISSION_SET = 3
    FOLDER = 4
    ASSOCIATION = 5


DOCUMENT_KINDS = (Kind.STABLE_DOCUMENT, Kind.ON_DEMAND_DOCUMENT)
KIND_OF_OBJECT_TYPE = {V.STABLE_DOCUMENT: Kind.STABLE_DOCUMENT,
                       V.ON_DEMAND_DOCUMENT: Kind.ON_DEMAND_DOCUMENT}


class Key(IntEnum):
    """object_key.key: multi-valued query keys (ITI TF-2a §3.18.4.1.2.3.7)."""

    EVENT_CODE = 1
    CONFIDENTIALITY_CODE = 2
    AUTHOR_PERSON = 3
    REFERENCE_ID = 4
    FOLDER_CODE = 5


STATUS_CODES = {V.SUBMITTED: 0, V.APPROVED: 1, V.DEPRECATED: 2,
                V.DMP_ARCHIVED: 3, V.DMP_DELETED: 4}
STATUS_OF_CODE = {v: k for k, v in STATUS_CODES.items()}


def dtm_key(value: str | None) -> int | None:
    """A DTM as a 14-digit integer (missing precision padded with its minimum)."""
    if value is None:
        return None
    try:
        return parse_dtm(value).padded_min()
    except HL7TypeError:
        return None


def _size(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def serialize(obj: RegistryObject) -> bytes:
    """The object's ebRIM element as stored for LeafClass answers."""
    return etree.tostring(to_element(obj), encoding="UTF-8")


#: every column an object_row may leave empty: executemany needs the same keys in each row.
_OPTIONAL_COLUMNS = tuple(
    c.name for c in registry_object.columns
    if c.nullable and c.name not in ("uuid", "status", "patient_pk", "lid", "version", "home")
)


def object_row(obj: RegistryObject, patient_pk: int | None) -> tuple[dict, list[tuple[int, str]]]:
    """Model object -> (registry_object row, [(Key, value)])."""
    row: dict = dict.fromkeys(_OPTIONAL_COLUMNS)
    row.update({
        "uuid": obj.id,
        "status": STATUS_CODES[obj.status or V.APPROVED],
        "patient_pk": patient_pk,
        "lid": obj.lid,
        "version": int(obj.version) if obj.version and obj.version.isdigit() else 1,
        "home": obj.home,
        "ebrim": serialize(obj),
    })
    keys: list[tuple[int, str]] = []
    if isinstance(obj, DocumentEntry):
        row.update(
            kind=KIND_OF_OBJECT_TYPE.get(obj.object_type, Kind.STABLE_DOCUMENT),
            unique_id=obj.unique_id,
            creation_time=dtm_key(obj.creation_time),
            service_start_time=dtm_key(obj.service_start_time),
            service_stop_time=dtm_key(obj.service_stop_time),
            class_code=obj.class_code.key if obj.class_code else None,
            type_code=obj.type_code.key if obj.type_code else None,
            format_code=obj.format_code.key if obj.format_code else None,
            facility_type_code=(obj.healthcare_facility_type_code.key
                                if obj.healthcare_facility_type_code else None),
            practice_setting_code=(obj.practice_setting_code.key
                                   if obj.practice_setting_code else None),
            repository_unique_id=obj.repository_unique_id,
            hash=obj.hash.lower() if obj.hash else None,
            size=_size(obj.size),
        )
        keys += [(Key.EVENT_CODE, c.key) for c in obj.event_codes]
        keys += [(Key.CONFIDENTIALITY_CODE, c.key) for c in obj.confidentiality_codes]
        keys += [(Key.AUTHOR_PERSON, a.person) for a in obj.authors if a.person]
        keys += [(Key.REFERENCE_ID, r) for r in obj.reference_ids]
    elif isinstance(obj, SubmissionSet):
        row.update(
            kind=Kind.SUBMISSION_SET,
            unique_id=obj.unique_id,
            submission_time=dtm_key(obj.submission_time),
            source_id=obj.source_id,
            content_type_code=obj.content_type_code.key if obj.content_type_code else None,
        )
        keys += [(Key.AUTHOR_PERSON, a.person) for a in obj.authors if a.person]
    elif isinstance(obj, Folder):
        row.update(
            kind=Kind.FOLDER,
            unique_id=obj.unique_id,
            last_update_time=dtm_key(obj.last_update_time),
        )
        keys += [(Key.FOLDER_CODE, c.key) for c in obj.codes]
    elif isinstance(obj, Association):
        row.update(kind=Kind.ASSOCIATION, assoc_type=obj.type,
                   source_uuid=obj.source, target_uuid=obj.target)
    else:
        raise TypeError(type(obj))
    return row, [(k, v[:256]) for k, v in keys]


# ----------------------------------------------------------------- patients

def patient_row(conn: Connection, cx: str, *, lock: bool = False):
    """(pk, merged_into) of a patient identifier, or None. After ITI-8 A40 / ITI-44 merge,
    documents live under the surviving identifier and the subsumed one no longer
    registers nor finds anything. ``lock`` (PostgreSQL: FOR UPDATE) serializes writers
    per patient; SQLite serializes every writer with BEGIN IMMEDIATE."""
    if conn.dialect.name == "postgresql":     # hot: every ITI-41/42 (pg_execute)
        row = pg_execute(conn, _PG_PATIENT_FOR_UPDATE if lock else _PG_PATIENT,
                         (cx,)).fetchone()
        return None if row is None else PatientRow(*row)
    return conn.execute(_PATIENT, {"cx": cx}).first()


class PatientRow(NamedTuple):
    pk: int
    merged_into: int | None


_PG_PATIENT = "SELECT pk, merged_into FROM patient WHERE cx = %s"
_PG_PATIENT_FOR_UPDATE = _PG_PATIENT + " FOR UPDATE"


#: built once: a statement built per call costs more CPU than running it (SQLAlchemy
#: computes its cache key on every build).
_PATIENT = select(patient.c.pk, patient.c.merged_into).where(patient.c.cx == bindparam("cx"))


def add_patient(conn: Connection, cx: str) -> int:
    """Register a patient identifier of the affinity domain (idempotent)."""
    existing = conn.execute(select(patient.c.pk).where(patient.c.cx == cx)).scalar()
    if existing is not None:
        return existing
    return conn.execute(insert(patient).values(cx=cx).returning(patient.c.pk)).scalar_one()


def merge_patient(conn: Connection, subsumed_cx: str, survivor_cx: str) -> int:
    """PIX merge (ITI-8 A40): ``subsumed_cx`` now means ``survivor_cx``. The subsumed
    row (and any merged into it) points to the survivor and its objects are re-pointed,
    so queries on either identifier find the survivor's documents. Returns the
    survivor's key."""
    survivor = add_patient(conn, survivor_cx)
    subsumed = add_patient(conn, subsumed_cx)
    conn.execute(update(patient).where(patient.c.merged_into == subsumed)
                 .values(merged_into=survivor))
    conn.execute(update(patient).where(patient.c.pk == subsumed).values(merged_into=survivor))
    conn.execute(update(registry_object).where(registry_object.c.patient_pk == subsumed)
                 .values(patient_pk=survivor))
    return survivor


def patient_cx(conn: Connection, pk: int) -> str | None:
    return conn.execute(select(patient.c.cx).where(patient.c.pk == pk)).scalar()


# ----------------------------------------------------------------- objects

@dataclass(frozen=True)
class StoredObject:
    """What validation needs to know about an object already in the registry."""

    pk: int
    uuid: str
    kind: Kind
    status: str
    patient_pk: int | None
    unique_id: str | None
    lid: str | None
    version: int
    hash: str | None
    size: int | None
    assoc_type: str | None
    source_uuid: str | None
    target_uuid: str | None


_STORED_COLUMNS = (
    registry_object.c.pk, registry_object.c.uuid, registry_object.c.kind,
    registry_object.c.status, registry_object.c.patient_pk, registry_object.c.unique_id,
    registry_object.c.lid, registry_object.c.version, registry_object.c.hash,
    registry_object.c.size, registry_object.c.assoc_type, registry_object.c.source_uuid,
    registry_object.c.target_uuid,
)


def _stored(row) -> StoredObject:
    """A row of :data:`_STORED_COLUMNS`, in that order (SQLAlchemy row or psycopg tuple)."""
    pk, uuid, kind, status, *rest = row
    return StoredObject(pk, uuid, Kind(kind), STATUS_OF_CODE[status], *rest)


def stored_objects(conn: Connection, uuids: Iterable[str],
                   unique_ids: Iterable[str]) -> list[StoredObject]:
    """The registry's objects having one of ``uuids`` as entryUUID or one of ``unique_ids``
    as uniqueId, in one statement (each object once)."""
    params = {"uuids": sorted(set(uuids)), "unique_ids": sorted(set(unique_ids))}
    if not params["uuids"] and not params["unique_ids"]:
        return []
    if conn.dialect.name == "postgresql":     # hot: every ITI-41/42 (pg_execute)
        rows = pg_execute(conn, _PG_STORED_BY_ANY, (params["uuids"], params["unique_ids"]),
                          prepare=False)
        return [_stored(r) for r in rows.fetchall()]
    return [_stored(r) for r in conn.execute(_STORED_BY_IN, params)]


#: PostgreSQL: ``= ANY(array)``, one statement text whatever the number of ids (psycopg
#: prepares it server-side after a few executions); SQLite: expanding ``IN``.
_PG_STORED_BY_ANY = (
    f"SELECT {', '.join(c.name for c in _STORED_COLUMNS)} FROM registry_object "
    "WHERE uuid = ANY(%s::varchar[]) OR unique_id = ANY(%s::varchar[])")
_STORED_BY_IN = select(*_STORED_COLUMNS).where(or_(
    registry_object.c.uuid.in_(bindparam("uuids", expanding=True)),
    registry_object.c.unique_id.in_(bindparam("unique_ids", expanding=True))))


def registration_reads(conn: Connection, cx: str, uuids: Iterable[str],
                       unique_ids: Iterable[str]
                       ) -> Callable[[], tuple[PatientRow | None, list[StoredObject]]]:
    """What a registration reads, sent now and returned by the callable: the patient's row,
    locked (:func:`patient_row`), then :func:`stored_objects`. In that order: the lookup
    runs once the lock is held, so it sees what a concurrent submission for the patient
    committed. On PostgreSQL both statements are sent before either result is read, so
    inside :func:`opendmp.db.pg_pipeline` they take one round trip with whatever else the
    pipeline carries; on SQLite they run here."""
    wanted = sorted(set(uuids)), sorted(set(unique_ids))
    if conn.dialect.name != "postgresql":
        row = patient_row(conn, cx, lock=True)
        found = stored_objects(conn, *wanted)
        return lambda: (row, found)
    patient_rows = pg_execute(conn, _PG_PATIENT_FOR_UPDATE, (cx,))
    object_rows = (pg_execute(conn, _PG_STORED_BY_ANY, wanted, prepare=False)
                   if any(wanted) else None)

    def result() -> tuple[PatientRow | None, list[StoredObject]]:
        row = patient_rows.fetchone()
        found = [] if object_rows is None else [_stored(r) for r in object_rows.fetchall()]
        return (None if row is None else PatientRow(*row)), found
    return result


def insert_objects(conn: Connection, objects: list[tuple[RegistryObject, int | None]]) -> None:
    """Insert model objects (with their patient keys) and their query keys."""
    if not objects:
        return
    rows, keysets = zip(*(object_row(obj, pk) for obj, pk in objects))
    if conn.dialect.name == "postgresql":   # hot: every ITI-41/42 (pg_execute)
        pg_execute(conn, _PG_INSERT, {
            # bytea travels as its hex input form ("\x...") inside the JSON text
            "rows": json.dumps([{k: (f"\\x{v.hex()}" if k == "ebrim" else v)
                                 for k, v in r.items() if v is not None} for r in rows]),
            "keys": json.dumps([(r["uuid"], int(k), v)
                                for r, keys in zip(rows, keysets) for k, v in keys]),
        })
        return
    pks = conn.execute(_INSERT_RETURNING_PK, list(rows)).scalars().all()
    key_rows = [
        {"object_pk": pk, "key": int(k), "value": v}
        for pk, keys in zip(pks, keysets) for k, v in keys
    ]
    if key_rows:
        conn.execute(_INSERT_KEY, key_rows)


_INSERT_RETURNING_PK = insert(registry_object).returning(registry_object.c.pk,
                                                         sort_by_parameter_order=True)
_INSERT_KEY = insert(object_key)
_INSERT_COLUMNS = ", ".join(c.name for c in registry_object.columns if c.name != "pk")

#: PostgreSQL: the objects and their keys in one statement, two parameters whatever the
#: number of rows: the rows as a JSON array read by ``json_populate_recordset`` against
#: the table's own row type (each value through its column type's input function, so a
#: too-long value is an error, as with VALUES), the keys as ``[entryUUID, key, value]``
#: joined to the new primary keys. Dumping one JSON string costs psycopg far less than
#: 27 parameters or arrays (0.12 vs 0.26-0.46 ms of CPU for a 3-object submission).
_PG_INSERT = (
    f"WITH ins AS (INSERT INTO registry_object ({_INSERT_COLUMNS}) "
    f"SELECT {_INSERT_COLUMNS} FROM json_populate_recordset(NULL::registry_object, "
    "%(rows)s::json) RETURNING pk, uuid) "
    "INSERT INTO object_key (object_pk, key, value) "
    "SELECT ins.pk, (k->>1)::smallint, k->>2 FROM json_array_elements(%(keys)s::json) AS k "
    "JOIN ins ON ins.uuid = k->>0"
)


def rewrite_object(conn: Connection, obj: RegistryObject) -> None:
    """Store a changed object's status and ebRIM (deprecation, folder lastUpdateTime)."""
    values = {"status": STATUS_CODES[obj.status or V.APPROVED], "ebrim": serialize(obj)}
    if isinstance(obj, Folder):
        values["last_update_time"] = dtm_key(obj.last_update_time)
    conn.execute(update(registry_object).where(registry_object.c.uuid == obj.id).values(**values))


def folders_of_documents(conn: Connection, doc_uuids: list[str]) -> list[tuple[str, str]]:
    """(folder uuid, document uuid) for every Folder HasMember association of the documents."""
    folder = registry_object.alias("folder")
    assoc = registry_object.alias("assoc")
    rows = conn.execute(
        select(assoc.c.source_uuid, assoc.c.target_uuid)
        .join(folder, folder.c.uuid == assoc.c.source_uuid)
        .where(assoc.c.kind == Kind.ASSOCIATION, assoc.c.assoc_type == V.HAS_MEMBER,
               assoc.c.target_uuid.in_(doc_uuids), folder.c.kind == Kind.FOLDER)
    )
    return [(r.source_uuid, r.target_uuid) for r in rows]


def approved_dependents(conn: Connection, doc_uuids: list[str],
                        assoc_types: tuple[str, ...]) -> list[str]:
    """Approved documents that are the source of an ``assoc_types`` association targeting
    one of ``doc_uuids`` (e.g. the addenda of a replaced document)."""
    if not doc_uuids:
        return []
    doc = registry_object.alias("doc")
    assoc = registry_object.alias("assoc")
    rows = conn.execute(
        select(doc.c.uuid).join(assoc, assoc.c.source_uuid == doc.c.uuid)
        .where(assoc.c.kind == Kind.ASSOCIATION, assoc.c.assoc_type.in_(assoc_types),
               assoc.c.target_uuid.in_(doc_uuids), doc.c.kind.in_(DOCUMENT_KINDS),
               doc.c.status == STATUS_CODES[V.APPROVED])
    )
    return sorted({r.uuid for r in rows})


def load_ebrim(conn: Connection, uuids: Iterable[str]) -> dict[str, bytes]:
    uuids = list(set(uuids))
    if not uuids:
        return {}
    rows = conn.execute(select(registry_object.c.uuid, registry_object.c.ebrim)
                        .where(registry_object.c.uuid.in_(uuids)))
    return {r.uuid: r.ebrim for r in rows}
