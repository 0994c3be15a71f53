"""The 14 XDS.b stored queries (ITI TF-2a §3.18.4.1.2.3.7.1-14) as SQL over opendmp.schema.

Each query is a handful of statements, one per step, none per object (no N+1):
patient-anchored queries resolve the patient CX to ``patient.pk`` in a scalar subquery
of the same statement and filter
``registry_object`` on ``(patient_pk, kind, status[, creation_time])`` — the
``ix_ro_patient`` index — with coded attributes on their columns (``IN``) and the
multi-valued keys (eventCodeList, confidentialityCode, authorPerson, referenceIdList,
folder codeList) as ``EXISTS`` on ``object_key``. Code values are ``code^^scheme``
exactly as stored; a value without ``^^scheme`` matches the code in any scheme.
Times compare as 14-digit padded DTM integers (``store.dtm_key``): From is inclusive
(>=), To exclusive (<), so precision may differ between query and metadata.

A query returns registry rows; ordering (by pk), the XDSTooManyResults bound and the
XDSResultNotSinglePatient check are applied by :func:`run`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from sqlalchemy import Connection, Row, and_, bindparam, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from opendmp.schema import object_key as ok
from opendmp.schema import patient
from opendmp.schema import registry_object as ro
from registry import errors as E
from registry import vocabulary as V
from registry.hl7types import HL7TypeError, parse_cx
from registry.store import DOCUMENT_KINDS, Key, Kind

from .params import (
    ASSOCIATION_STATUS,
    ASSOCIATION_TYPES,
    DE_AUTHOR_PERSON,
    DE_CLASS_CODE,
    DE_CONFIDENTIALITY_CODE,
    DE_CREATION_FROM,
    DE_CREATION_TO,
    DE_EVENT_CODE,
    DE_FACILITY_TYPE_CODE,
    DE_FORMAT_CODE,
    DE_LOGICAL_ID,
    DE_PATIENT_ID,
    DE_PRACTICE_SETTING_CODE,
    DE_REFERENCE_IDS,
    DE_SERVICE_START_FROM,
    DE_SERVICE_START_TO,
    DE_SERVICE_STOP_FROM,
    DE_SERVICE_STOP_TO,
    DE_STATUS,
    DE_TYPE,
    DE_TYPE_CODE,
    DE_UNIQUE_ID,
    DE_UUID,
    FOL_CODE_LIST,
    FOL_LAST_UPDATE_FROM,
    FOL_LAST_UPDATE_TO,
    FOL_LOGICAL_ID,
    FOL_PATIENT_ID,
    FOL_STATUS,
    FOL_UNIQUE_ID,
    FOL_UUID,
    HOME_COMMUNITY_ID,
    METADATA_LEVEL,
    PATIENT_ID,
    SS_AUTHOR_PERSON,
    SS_CONTENT_TYPE,
    SS_PATIENT_ID,
    SS_SOURCE_ID,
    SS_STATUS,
    SS_SUBMISSION_FROM,
    SS_SUBMISSION_TO,
    SS_UNIQUE_ID,
    SS_UUID,
    UUID,
    P,
    Param,
    QueryParams,
)


class TooManyResults(Exception):
    """The answer would hold more than the affinity domain's max_query_results."""


@dataclass
class Ctx:
    conn: Connection
    #: LeafClass answers need the ebRIM blobs; ObjectRef answers do not.
    leaf: bool
    limit: int
    #: values of the named bind parameters of prebuilt parts (``PATIENT_PK``)
    params: dict = field(default_factory=dict)

    @property
    def columns(self) -> list:
        cols = [ro.c.pk, ro.c.uuid, ro.c.kind, ro.c.patient_pk,
                ro.c.source_uuid, ro.c.target_uuid]
        return cols + [ro.c.ebrim] if self.leaf else cols

    def fetch(self, *conditions: ColumnElement, final: bool = True) -> list[Row]:
        """One SELECT. ``final`` rows are all returned, so more than ``limit`` of them is
        XDSTooManyResults (fetched with LIMIT limit+1 to bound memory); candidate rows
        that are filtered afterwards are not bounded."""
        stmt = select(*self.columns).where(*conditions)
        if final:
            stmt = stmt.limit(self.limit + 1)
        rows = self.conn.execute(stmt, self.params).all()
        if final and len(rows) > self.limit:
            raise TooManyResults
        return rows


# ======================================================================= SQL helpers

def code_match(column, values: Iterable[str]) -> ColumnElement:
    """``column`` holds one of ``values`` (``code^^scheme``, or ``code`` for any scheme)."""
    values = list(dict.fromkeys(values))
    full = [v for v in values if "^^" in v]
    conds: list[ColumnElement] = [column.in_(full)] if full else []
    for code in (v for v in values if "^^" not in v):
        prefix = code + "^^"
        conds.append(func.substr(column, 1, len(prefix)) == prefix)
    return conds[0] if len(conds) == 1 else or_(*conds)


def like_any(column, patterns: Iterable[str]) -> ColumnElement:
    """SQL LIKE with the ITI-18 wildcards ``%`` and ``_`` (case-insensitive on both engines;
    a backslash is literal)."""
    conds = [column.ilike(p.replace("\\", "\\\\"), escape="\\") for p in dict.fromkeys(patterns)]
    return conds[0] if len(conds) == 1 else or_(*conds)


def has_key(key: Key, value_condition: ColumnElement) -> ColumnElement:
    """The object has a multi-valued key (object_key) whose value satisfies the condition."""
    return (select(ok.c.object_pk)
            .where(ok.c.object_pk == ro.c.pk, ok.c.key == int(key), value_condition)
            .exists())


def time_range(p: QueryParams, column, lower: str, upper: str) -> list[ColumnElement]:
    conds = []
    start, end = p.time(lower), p.time(upper)
    if start is not None:
        conds.append(column >= start)
    if end is not None:
        conds.append(column < end)
    return conds


def by_id(p: QueryParams, uuid_param: str, unique_id_param: str,
          logical_id_param: str | None = None) -> ColumnElement:
    """Selection by entryUUID, uniqueId or (Metadata Update) logicalID list."""
    if p.has(uuid_param):
        return ro.c.uuid.in_(p.values(uuid_param))
    if p.has(unique_id_param):
        return ro.c.unique_id.in_(p.values(unique_id_param))
    ids = p.values(logical_id_param)
    # the first version's lid is its own entryUUID
    return or_(ro.c.lid.in_(ids), ro.c.uuid.in_(ids))


def association_status(p: QueryParams) -> list[ColumnElement]:
    """$XDSAssociationStatus (Metadata Update option) filters associations when given."""
    if not p.has(ASSOCIATION_STATUS):
        return []
    return [ro.c.status.in_(p.statuses(ASSOCIATION_STATUS))]


def has_member_from(source) -> list[ColumnElement]:
    return [ro.c.kind == Kind.ASSOCIATION, ro.c.assoc_type == V.HAS_MEMBER,
            ro.c.source_uuid == source]


def document_filters(p: QueryParams) -> list[ColumnElement]:
    """$XDSDocumentEntryFormatCode (OR) and $XDSDocumentEntryConfidentialityCode (AND/OR)."""
    conds = []
    if p.has(DE_FORMAT_CODE):
        conds.append(code_match(ro.c.format_code, p.values(DE_FORMAT_CODE)))
    for group in p.and_groups(DE_CONFIDENTIALITY_CODE):
        conds.append(has_key(Key.CONFIDENTIALITY_CODE, code_match(ok.c.value, group)))
    return conds


#: the active (not merged) patient of a canonical CX, as a scalar subquery: the
#: patient-anchored queries resolve it inside their own statement (no round trip of
#: its own). Built once: building it per query costs more CPU than running it.
PATIENT_PK = (select(patient.c.pk)
              .where(patient.c.cx == bindparam("patient_cx"), patient.c.merged_into.is_(None))
              .scalar_subquery())


def resolve_patient(ctx: Ctx, p: QueryParams, name: str) -> ColumnElement:
    """The patient's key from a CX parameter: :data:`PATIENT_PK` bound to the canonical CX
    (patients are stored without CX.5, as ITI-42 registers them). A malformed CX is
    XDSRegistryError; an unknown or merged (subsumed) one gives NULL, under which nothing
    is found."""
    value = p.single(name)
    try:
        ctx.params["patient_cx"] = parse_cx(value).canonical
    except HL7TypeError as exc:
        raise E.XdsError(E.REGISTRY_ERROR, f"{name}: {exc}") from None
    return PATIENT_PK


def one_of(column, values: list) -> ColumnElement:
    """``column = v`` for a single value (a plain bound parameter, compiled once and
    cached), ``column IN (...)`` otherwise (expanded at every execution)."""
    return column == values[0] if len(values) == 1 else column.in_(values)


def linking(objects: list[Row], candidates: list[Row]) -> list[Row]:
    """The candidate associations whose both ends are among ``objects`` or among the
    associations kept so far (a SubmissionSet's HasMember to a Folder->Document one)."""
    ids = {o.uuid for o in objects}
    kept: list[Row] = []
    pending = list(candidates)
    while True:
        linked = [a for a in pending if a.source_uuid in ids and a.target_uuid in ids]
        if not linked:
            return kept
        kept += linked
        ids.update(a.uuid for a in linked)
        pending = [a for a in pending if a.uuid not in ids]


# ======================================================================= the queries

_DE_CODE_COLUMNS = (
    (DE_CLASS_CODE, ro.c.class_code),
    (DE_TYPE_CODE, ro.c.type_code),
    (DE_PRACTICE_SETTING_CODE, ro.c.practice_setting_code),
    (DE_FACILITY_TYPE_CODE, ro.c.facility_type_code),
    (DE_FORMAT_CODE, ro.c.format_code),
)


def find_documents(ctx: Ctx, p: QueryParams, *, by_reference_id: bool = False) -> list[Row]:
    """FindDocuments §3.18.4.1.2.3.7.1 / FindDocumentsByReferenceId §3.18.4.1.2.3.7.14."""
    conds = (time_range(p, ro.c.creation_time, DE_CREATION_FROM, DE_CREATION_TO)
             + time_range(p, ro.c.service_start_time, DE_SERVICE_START_FROM, DE_SERVICE_START_TO)
             + time_range(p, ro.c.service_stop_time, DE_SERVICE_STOP_FROM, DE_SERVICE_STOP_TO))
    for name, column in _DE_CODE_COLUMNS:
        if p.has(name):
            conds.append(code_match(column, p.values(name)))
    for name, key in ((DE_EVENT_CODE, Key.EVENT_CODE),
                      (DE_CONFIDENTIALITY_CODE, Key.CONFIDENTIALITY_CODE)):
        for group in p.and_groups(name):
            conds.append(has_key(key, code_match(ok.c.value, group)))
    if p.has(DE_AUTHOR_PERSON):
        conds.append(has_key(Key.AUTHOR_PERSON, like_any(ok.c.value, p.values(DE_AUTHOR_PERSON))))
    if by_reference_id:
        for group in p.and_groups(DE_REFERENCE_IDS):
            conds.append(has_key(Key.REFERENCE_ID, ok.c.value.in_(group)))
    statuses, kinds = p.statuses(DE_STATUS), p.document_kinds()
    patient = resolve_patient(ctx, p, DE_PATIENT_ID)
    if not statuses or not kinds:
        return []
    return ctx.fetch(ro.c.patient_pk == patient, one_of(ro.c.kind, kinds),
                     one_of(ro.c.status, statuses), *conds)


def find_documents_by_reference_id(ctx: Ctx, p: QueryParams) -> list[Row]:
    return find_documents(ctx, p, by_reference_id=True)


def find_submission_sets(ctx: Ctx, p: QueryParams) -> list[Row]:
    """FindSubmissionSets §3.18.4.1.2.3.7.2."""
    conds = time_range(p, ro.c.submission_time, SS_SUBMISSION_FROM, SS_SUBMISSION_TO)
    if p.has(SS_SOURCE_ID):
        conds.append(ro.c.source_id.in_(p.values(SS_SOURCE_ID)))
    if p.has(SS_CONTENT_TYPE):
        conds.append(code_match(ro.c.content_type_code, p.values(SS_CONTENT_TYPE)))
    if p.has(SS_AUTHOR_PERSON):
        conds.append(has_key(Key.AUTHOR_PERSON, like_any(ok.c.value, p.values(SS_AUTHOR_PERSON))))
    statuses = p.statuses(SS_STATUS)
    patient = resolve_patient(ctx, p, SS_PATIENT_ID)
    if not statuses:
        return []
    return ctx.fetch(ro.c.patient_pk == patient, ro.c.kind == Kind.SUBMISSION_SET,
                     one_of(ro.c.status, statuses), *conds)


def find_folders(ctx: Ctx, p: QueryParams) -> list[Row]:
    """FindFolders §3.18.4.1.2.3.7.3."""
    conds = time_range(p, ro.c.last_update_time, FOL_LAST_UPDATE_FROM, FOL_LAST_UPDATE_TO)
    for group in p.and_groups(FOL_CODE_LIST):
        conds.append(has_key(Key.FOLDER_CODE, code_match(ok.c.value, group)))
    statuses = p.statuses(FOL_STATUS)
    patient = resolve_patient(ctx, p, FOL_PATIENT_ID)
    if not statuses:
        return []
    return ctx.fetch(ro.c.patient_pk == patient, ro.c.kind == Kind.FOLDER,
                     one_of(ro.c.status, statuses), *conds)


def get_all(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetAll §3.18.4.1.2.3.7.4: the patient's SubmissionSets, DocumentEntries and Folders
    (each with its status list; format/confidentiality/type filter the documents) and the
    Associations that link them."""
    de_status, ss_status, fol_status = (p.statuses(DE_STATUS), p.statuses(SS_STATUS),
                                        p.statuses(FOL_STATUS))
    kinds, doc_filters = p.document_kinds(), document_filters(p)
    patient = resolve_patient(ctx, p, PATIENT_ID)
    objects: list[Row] = []
    if de_status and kinds:
        objects += ctx.fetch(ro.c.patient_pk == patient, one_of(ro.c.kind, kinds),
                             one_of(ro.c.status, de_status), *doc_filters)
    if ss_status:
        objects += ctx.fetch(ro.c.patient_pk == patient, ro.c.kind == Kind.SUBMISSION_SET,
                             one_of(ro.c.status, ss_status))
    if fol_status:
        objects += ctx.fetch(ro.c.patient_pk == patient, ro.c.kind == Kind.FOLDER,
                             one_of(ro.c.status, fol_status))
    if not objects:
        return []
    if len(objects) > ctx.limit:
        raise TooManyResults
    own = ro.alias("own")
    sources = select(own.c.uuid).where(
        own.c.patient_pk == patient,
        own.c.kind.in_([*DOCUMENT_KINDS, Kind.SUBMISSION_SET, Kind.FOLDER]))
    candidates = ctx.fetch(ro.c.kind == Kind.ASSOCIATION, ro.c.source_uuid.in_(sources),
                           final=False)
    return objects + linking(objects, candidates)


def get_documents(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetDocuments §3.18.4.1.2.3.7.5 (any status and type)."""
    return ctx.fetch(ro.c.kind.in_(DOCUMENT_KINDS),
                     by_id(p, DE_UUID, DE_UNIQUE_ID, DE_LOGICAL_ID))


def get_folders(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetFolders §3.18.4.1.2.3.7.6."""
    return ctx.fetch(ro.c.kind == Kind.FOLDER, by_id(p, FOL_UUID, FOL_UNIQUE_ID, FOL_LOGICAL_ID))


def get_associations(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetAssociations §3.18.4.1.2.3.7.7: associations with a given object at either end."""
    uuids = p.values(UUID)
    return ctx.fetch(ro.c.kind == Kind.ASSOCIATION,
                     or_(ro.c.source_uuid.in_(uuids), ro.c.target_uuid.in_(uuids)),
                     *association_status(p))


def get_documents_and_associations(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetDocumentsAndAssociations §3.18.4.1.2.3.7.8."""
    docs = ctx.fetch(ro.c.kind.in_(DOCUMENT_KINDS), by_id(p, DE_UUID, DE_UNIQUE_ID))
    if not docs:
        return []
    uuids = [d.uuid for d in docs]
    return docs + ctx.fetch(ro.c.kind == Kind.ASSOCIATION,
                            or_(ro.c.source_uuid.in_(uuids), ro.c.target_uuid.in_(uuids)),
                            *association_status(p))


def get_submission_sets(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetSubmissionSets §3.18.4.1.2.3.7.9: the SubmissionSets holding the given objects
    and the HasMember associations that link them."""
    members = ctx.fetch(ro.c.kind == Kind.ASSOCIATION, ro.c.assoc_type == V.HAS_MEMBER,
                        ro.c.target_uuid.in_(p.values(UUID)), *association_status(p),
                        final=False)
    if not members:
        return []
    sets = ctx.fetch(ro.c.kind == Kind.SUBMISSION_SET,
                     ro.c.uuid.in_(sorted({m.source_uuid for m in members})))
    ids = {s.uuid for s in sets}
    return sets + [m for m in members if m.source_uuid in ids]


def get_submission_set_and_contents(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetSubmissionSetAndContents §3.18.4.1.2.3.7.10: the SubmissionSet, its member
    DocumentEntries (format/confidentiality/type filters) and Folders, and the member
    associations (SS->DE, SS->Fol, SS->(Fol->DE) and the Fol->DE ones) linking what is
    returned."""
    found = ctx.fetch(ro.c.kind == Kind.SUBMISSION_SET, by_id(p, SS_UUID, SS_UNIQUE_ID))
    if not found:
        return []
    ss = found[0]
    members = ctx.fetch(*has_member_from(ss.uuid), *association_status(p), final=False)
    if not members:
        return [ss]
    kinds = p.document_kinds()
    wanted = [ro.c.kind == Kind.FOLDER,
              and_(ro.c.kind == Kind.ASSOCIATION, *association_status(p))]
    if kinds:
        wanted.append(and_(one_of(ro.c.kind, kinds), *document_filters(p)))
    targets = sorted({m.target_uuid for m in members})
    content = ctx.fetch(ro.c.uuid.in_(targets), or_(*wanted), final=False)
    objects = [ss] + [c for c in content if c.kind != Kind.ASSOCIATION]
    inner = [c for c in content if c.kind == Kind.ASSOCIATION]
    return objects + linking(objects, [*inner, *members])


def get_folder_and_contents(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetFolderAndContents §3.18.4.1.2.3.7.11: the Folder, its member DocumentEntries
    (format/confidentiality/type filters) and the Fol->DE HasMember associations."""
    found = ctx.fetch(ro.c.kind == Kind.FOLDER, by_id(p, FOL_UUID, FOL_UNIQUE_ID))
    if not found:
        return []
    folder = found[0]
    members = ctx.fetch(*has_member_from(folder.uuid), *association_status(p), final=False)
    kinds = p.document_kinds()
    if not members or not kinds:
        return [folder]
    targets = sorted({m.target_uuid for m in members})
    docs = ctx.fetch(ro.c.uuid.in_(targets), one_of(ro.c.kind, kinds), *document_filters(p))
    ids = {d.uuid for d in docs}
    return [folder] + docs + [m for m in members if m.target_uuid in ids]


def get_folders_for_document(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetFoldersForDocument §3.18.4.1.2.3.7.12 (one statement)."""
    if p.has(DE_UUID):
        targets = [p.single(DE_UUID)]
    else:
        doc = ro.alias("doc")
        targets = select(doc.c.uuid).where(doc.c.unique_id == p.single(DE_UNIQUE_ID),
                                           doc.c.kind.in_(DOCUMENT_KINDS))
    member = ro.alias("member")
    folders = select(member.c.source_uuid).where(
        member.c.kind == Kind.ASSOCIATION, member.c.assoc_type == V.HAS_MEMBER,
        member.c.target_uuid.in_(targets),
        *([member.c.status.in_(p.statuses(ASSOCIATION_STATUS))]
          if p.has(ASSOCIATION_STATUS) else []))
    return ctx.fetch(ro.c.kind == Kind.FOLDER, ro.c.uuid.in_(folders))


def get_related_documents(ctx: Ctx, p: QueryParams) -> list[Row]:
    """GetRelatedDocuments §3.18.4.1.2.3.7.13: DocumentEntries linked to the given one,
    in either direction, by an association of $AssociationTypes (RPLC, XFRM, APND,
    XFRM_RPLC, signs...), with those associations and the original document; nothing
    when there is no related document."""
    kinds = p.document_kinds()
    if not kinds:
        return []
    found = ctx.fetch(one_of(ro.c.kind, kinds), by_id(p, DE_UUID, DE_UNIQUE_ID))
    if not found:
        return []
    ids = sorted({d.uuid for d in found})
    start = set(ids)
    links = ctx.fetch(ro.c.kind == Kind.ASSOCIATION,
                      ro.c.assoc_type.in_(p.values(ASSOCIATION_TYPES)),
                      or_(ro.c.source_uuid.in_(ids), ro.c.target_uuid.in_(ids)),
                      *association_status(p), final=False)
    others = {a.target_uuid if a.source_uuid in start else a.source_uuid for a in links} - start
    if not others:
        return []
    related = ctx.fetch(ro.c.uuid.in_(sorted(others)), one_of(ro.c.kind, kinds))
    rel = {d.uuid for d in related}
    kept = [a for a in links if a.source_uuid in rel or a.target_uuid in rel]
    if not kept:
        return []
    return found + related + kept


# ======================================================================= the catalogue

@dataclass(frozen=True)
class StoredQuery:
    name: str
    id: str
    params: tuple[Param, ...]
    run: Callable[[Ctx, QueryParams], list[Row]]
    #: exactly one of these parameters is required.
    one_of: tuple[str, ...] = ()
    #: Get* queries may reach objects of several patients (XDSResultNotSinglePatient).
    by_id: bool = True

    def accepts(self, name: str) -> bool:
        return any(p.name == name for p in self.params)


_LEVEL = P(METADATA_LEVEL)
_HOME = P(HOME_COMMUNITY_ID)
_ASSOC_STATUS = P(ASSOCIATION_STATUS, multiple=True)
_DE_TYPE = P(DE_TYPE, multiple=True)
_FIND_DOCUMENTS = (
    P(DE_PATIENT_ID, required=True),
    P(DE_CLASS_CODE, multiple=True),
    P(DE_TYPE_CODE, multiple=True),
    P(DE_PRACTICE_SETTING_CODE, multiple=True),
    P(DE_CREATION_FROM), P(DE_CREATION_TO),
    P(DE_SERVICE_START_FROM), P(DE_SERVICE_START_TO),
    P(DE_SERVICE_STOP_FROM), P(DE_SERVICE_STOP_TO),
    P(DE_FACILITY_TYPE_CODE, multiple=True),
    P(DE_EVENT_CODE, and_or=True),
    P(DE_CONFIDENTIALITY_CODE, and_or=True),
    P(DE_AUTHOR_PERSON, multiple=True),
    P(DE_FORMAT_CODE, multiple=True),
    P(DE_STATUS, required=True, multiple=True),
    _DE_TYPE, _LEVEL,
)
_CONTENT_FILTERS = (P(DE_FORMAT_CODE, multiple=True), P(DE_CONFIDENTIALITY_CODE, and_or=True),
                    _DE_TYPE, _HOME, _LEVEL, _ASSOC_STATUS)

QUERIES: tuple[StoredQuery, ...] = (
    StoredQuery("FindDocuments", "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d",
                _FIND_DOCUMENTS, find_documents, by_id=False),
    StoredQuery("FindSubmissionSets", "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9", (
        P(SS_PATIENT_ID, required=True),
        P(SS_SOURCE_ID, multiple=True),
        P(SS_SUBMISSION_FROM), P(SS_SUBMISSION_TO),
        P(SS_AUTHOR_PERSON),
        P(SS_CONTENT_TYPE, multiple=True),
        P(SS_STATUS, required=True, multiple=True),
        _LEVEL,
    ), find_submission_sets, by_id=False),
    StoredQuery("FindFolders", "urn:uuid:958f3006-baad-4929-a4de-ff1114824431", (
        P(FOL_PATIENT_ID, required=True),
        P(FOL_LAST_UPDATE_FROM), P(FOL_LAST_UPDATE_TO),
        P(FOL_CODE_LIST, and_or=True),
        P(FOL_STATUS, required=True, multiple=True),
        _LEVEL,
    ), find_folders, by_id=False),
    StoredQuery("GetAll", "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3", (
        P(PATIENT_ID, required=True),
        P(DE_STATUS, required=True, multiple=True),
        P(SS_STATUS, required=True, multiple=True),
        P(FOL_STATUS, required=True, multiple=True),
        P(DE_FORMAT_CODE, multiple=True),
        P(DE_CONFIDENTIALITY_CODE, and_or=True),
        _DE_TYPE, _LEVEL,
    ), get_all, by_id=False),
    StoredQuery("GetDocuments", "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4", (
        P(DE_UUID, multiple=True), P(DE_UNIQUE_ID, multiple=True),
        P(DE_LOGICAL_ID, multiple=True), _HOME, _LEVEL,
    ), get_documents, one_of=(DE_UUID, DE_UNIQUE_ID, DE_LOGICAL_ID)),
    StoredQuery("GetFolders", "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4", (
        P(FOL_UUID, multiple=True), P(FOL_UNIQUE_ID, multiple=True),
        P(FOL_LOGICAL_ID, multiple=True), _HOME, _LEVEL,
    ), get_folders, one_of=(FOL_UUID, FOL_UNIQUE_ID, FOL_LOGICAL_ID)),
    StoredQuery("GetAssociations", "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155", (
        P(UUID, required=True, multiple=True), _HOME, _LEVEL, _ASSOC_STATUS,
    ), get_associations),
    StoredQuery("GetDocumentsAndAssociations", "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a", (
        P(DE_UUID, multiple=True), P(DE_UNIQUE_ID, multiple=True), _HOME, _LEVEL, _ASSOC_STATUS,
    ), get_documents_and_associations, one_of=(DE_UUID, DE_UNIQUE_ID)),
    StoredQuery("GetSubmissionSets", "urn:uuid:51224314-5390-4169-9b91-b1980040715a", (
        P(UUID, required=True, multiple=True), _HOME, _LEVEL, _ASSOC_STATUS,
    ), get_submission_sets),
    StoredQuery("GetSubmissionSetAndContents", "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83", (
        P(SS_UUID), P(SS_UNIQUE_ID), *_CONTENT_FILTERS,
    ), get_submission_set_and_contents, one_of=(SS_UUID, SS_UNIQUE_ID)),
    StoredQuery("GetFolderAndContents", "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7", (
        P(FOL_UUID), P(FOL_UNIQUE_ID), *_CONTENT_FILTERS,
    ), get_folder_and_contents, one_of=(FOL_UUID, FOL_UNIQUE_ID)),
    StoredQuery("GetFoldersForDocument", "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578", (
        P(DE_UUID), P(DE_UNIQUE_ID), _HOME, _LEVEL, _ASSOC_STATUS,
    ), get_folders_for_document, one_of=(DE_UUID, DE_UNIQUE_ID)),
    StoredQuery("GetRelatedDocuments", "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6", (
        P(DE_UUID), P(DE_UNIQUE_ID), P(ASSOCIATION_TYPES, required=True, multiple=True),
        _DE_TYPE, _HOME, _LEVEL, _ASSOC_STATUS,
    ), get_related_documents, one_of=(DE_UUID, DE_UNIQUE_ID)),
    StoredQuery("FindDocumentsByReferenceId", "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492", (
        *_FIND_DOCUMENTS, P(DE_REFERENCE_IDS, required=True, and_or=True),
    ), find_documents_by_reference_id, by_id=False),
)

#: stored query id (lower case) -> definition
STORED_QUERIES: dict[str, StoredQuery] = {q.id: q for q in QUERIES}


def run(conn: Connection, query: StoredQuery, params: QueryParams, *, leaf: bool,
        limit: int) -> list[Row]:
    """Run a stored query: its rows once each, by pk. Raises TooManyResults or XdsError
    (XDSResultNotSinglePatient)."""
    rows = query.run(Ctx(conn, leaf, limit), params)
    unique = sorted({r.pk: r for r in rows}.values(), key=lambda r: r.pk)
    if len(unique) > limit:
        raise TooManyResults
    if query.by_id:
        patients = {r.patient_pk for r in unique
                    if r.kind != Kind.ASSOCIATION and r.patient_pk is not None}
        if len(patients) > 1:
            raise E.XdsError(E.RESULT_NOT_SINGLE_PATIENT,
                             f"{query.name} would return objects of {len(patients)} patients")
    return unique
