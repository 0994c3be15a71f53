"""ITI-42 Register Document Set-b, registry side (ITI TF-2b §3.42.4.1.3).

:func:`register_submission` is the whole transaction on an open write transaction:
database-independent validation (:mod:`registry.validation`), symbolic ids replaced by
UUIDs, checks against the registry's content (patient known to the affinity domain,
association targets, uniqueIds), then the inserts and the side effects (deprecation of
replaced documents, folder lastUpdateTime, folder membership of replacements). It raises
:class:`~registry.errors.XdsErrors` before writing anything when the submission is
refused; the caller's transaction makes the rest all-or-nothing. The repository's ITI-41
calls it in steps, :func:`begin_registration`, :meth:`Registration.check` and
:meth:`Registration.store`, so that its own statements travel with the registry's in
the same round trips.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable

import psycopg
from lxml import etree
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from opendmp.db import pg_pipeline, write_transaction
from soapstack.namespaces import RIM

from . import errors as E
from . import store
from . import vocabulary as V
from .affinity import AffinityDomain
from .ebrim import EbRimError, new_uuid, parse_registry_object, parse_registry_object_list
from .hl7types import HL7TypeError, parse_cx
from .model import Association, DocumentEntry, RegistryObject, Submission
from .store import DOCUMENT_KINDS, Kind, StoredObject
from .validation import validate_submission


def now_dtm() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")


def read_submit_objects_request(request: etree._Element) -> Submission:
    """lcm:SubmitObjectsRequest -> Submission (XDSRegistryMetadataError when unreadable)."""
    rol = request.find(f"{{{RIM}}}RegistryObjectList")
    if rol is None:
        raise E.XdsErrors([E.XdsError(E.REGISTRY_METADATA_ERROR,
                                      "SubmitObjectsRequest has no rim:RegistryObjectList")])
    try:
        return parse_registry_object_list(rol)
    except EbRimError as exc:
        raise E.XdsErrors([E.XdsError(E.REGISTRY_METADATA_ERROR, str(exc))]) from None


# ------------------------------------------------------------------ symbolic ids

def _is_uuid(value: str | None) -> bool:
    return bool(value) and value.startswith("urn:uuid:")


def assign_uuids(sub: Submission) -> dict[str, str]:
    """Replace symbolic ids (ITI TF-3 §4.2.3.1.5) by new UUIDs everywhere in the submission;
    return the symbolic -> UUID map."""
    for obj in sub.objects():
        if not obj.id:  # ebRIM requires an id; real sources omit it on associations
            obj.id = new_uuid()
    mapping = {o.id: new_uuid() for o in sub.objects() if not _is_uuid(o.id)}

    def resolve(ref: str) -> str:
        return mapping.get(ref, ref)

    for obj in sub.objects():
        obj.id = resolve(obj.id)
        for c in obj.extra_classifications:
            c.classified_object = resolve(c.classified_object)
            if not _is_uuid(c.id):
                c.id = new_uuid()
        for ei in obj.extra_external_identifiers:
            ei.registry_object = obj.id
            if not _is_uuid(ei.id):
                ei.id = new_uuid()
        obj.external_identifier_ids = {k: v for k, v in obj.external_identifier_ids.items()
                                       if _is_uuid(v)}
        for holder in _coded_parts(obj):
            if not _is_uuid(holder.id):
                holder.id = new_uuid()
        for attr in ("node_classification_id", "limited_metadata"):
            value = getattr(obj, attr, None)
            if value is not None and not _is_uuid(value):
                setattr(obj, attr, new_uuid())
        if isinstance(obj, Association):
            obj.source = resolve(obj.source)
            obj.target = resolve(obj.target)
    for c in sub.classifications:
        c.classified_object = resolve(c.classified_object)
    return mapping


def _coded_parts(obj: RegistryObject) -> list:
    parts = list(getattr(obj, "authors", []))
    for attr in ("class_code", "type_code", "format_code", "healthcare_facility_type_code",
                 "practice_setting_code", "content_type_code"):
        code = getattr(obj, attr, None)
        if code is not None:
            parts.append(code)
    for attr in ("confidentiality_codes", "event_codes", "codes"):
        parts.extend(getattr(obj, attr, []))
    return parts


# ------------------------------------------------------------------ registry checks

def _canonical(cx: str) -> str:
    return parse_cx(cx).canonical


def _patient_key(conn: Connection, cx: str, row: store.PatientRow | None) -> int:
    """The patient's key from its row, or XDSUnknownPatientId (ITI TF-2b §3.42.4.1.3.1)."""
    if row is None:
        raise E.XdsErrors([E.XdsError(
            E.UNKNOWN_PATIENT_ID, f"patientId {cx} is not known to the registry", cx)])
    if row.merged_into is not None:
        survivor = store.patient_cx(conn, row.merged_into)
        raise E.XdsErrors([E.XdsError(
            E.UNKNOWN_PATIENT_ID, f"patientId {cx} was merged into {survivor}; documents are "
            "registered under the surviving identifier", cx)])
    return row.pk


def _check_references(sub: Submission, existing: dict[str, StoredObject],
                      patient: int) -> list[E.XdsError]:
    """Association endpoints exist, have the right kind, status and patient (ITI TF-3 §4.2.2)."""
    errors: list[E.XdsError] = []
    local = {o.id: o for o in sub.objects()}
    ss = sub.submission_set
    for a in sub.associations:
        for end in (a.source, a.target):
            if end not in local and end not in existing:
                errors.append(E.XdsError(E.UNRESOLVED_REFERENCE,
                                         f"Association {a.id} references {end}, which is neither "
                                         "in the submission nor in the registry", end))
        if errors:
            continue
        target = existing.get(a.target)
        source = existing.get(a.source)
        if a.type in V.DOCUMENT_RELATIONSHIPS:
            if not isinstance(local.get(a.source), DocumentEntry):
                errors.append(E.XdsError(E.REGISTRY_METADATA_ERROR,
                                         f"{a.type.rsplit(':', 1)[-1]} association {a.id} must "
                                         "have a DocumentEntry of this submission as source",
                                         a.id))
            if target is not None:
                if target.kind == Kind.SUBMISSION_SET and a.type == V.SIGNS:
                    pass
                elif target.kind not in DOCUMENT_KINDS:
                    errors.append(E.XdsError(E.REGISTRY_METADATA_ERROR,
                                             f"association {a.id} targets {a.target}, which is "
                                             "not a DocumentEntry", a.id))
                elif target.status != V.APPROVED:
                    errors.append(E.XdsError(
                        E.DEPRECATED_DOCUMENT,
                        f"association {a.id} targets document {a.target} whose status is "
                        f"{target.status.rsplit(':', 1)[-1]}; only Approved documents can be "
                        "replaced, appended or transformed", a.id))
                if target.patient_pk is not None and target.patient_pk != patient:
                    errors.append(E.XdsError(E.PATIENT_ID_DOES_NOT_MATCH,
                                             f"association {a.id} relates documents of two "
                                             "patients", a.id))
        elif a.type == V.HAS_MEMBER:
            if source is not None:
                if source.kind != Kind.FOLDER:
                    errors.append(E.XdsError(E.REGISTRY_METADATA_ERROR,
                                             f"HasMember association {a.id} has an existing "
                                             f"{source.kind.name} as source; only a Folder can "
                                             "gain members after its submission", a.id))
                elif source.patient_pk != patient:
                    errors.append(E.XdsError(E.PATIENT_ID_DOES_NOT_MATCH,
                                             f"folder {a.source} belongs to another patient",
                                             a.id))
                elif ss is not None and not any(
                        m.type == V.HAS_MEMBER and m.source == ss.id and m.target == a.id
                        for m in sub.associations):
                    errors.append(E.XdsError(E.REGISTRY_METADATA_ERROR,
                                             f"association {a.id} adding to existing folder "
                                             f"{a.source} must be a member of the SubmissionSet",
                                             a.id))
            if target is not None and target.kind == Kind.SUBMISSION_SET:
                errors.append(E.XdsError(E.REGISTRY_METADATA_ERROR,
                                         f"HasMember association {a.id} targets SubmissionSet "
                                         f"{a.target}; a SubmissionSet cannot be a member",
                                         a.id))
            if target is not None and target.kind in DOCUMENT_KINDS:
                if target.patient_pk != patient:
                    errors.append(E.XdsError(E.PATIENT_ID_DOES_NOT_MATCH,
                                             f"document {a.target} belongs to another patient",
                                             a.id))
    return errors


def _check_unique_ids(sub: Submission, stored_objects: list[StoredObject]) -> list[E.XdsError]:
    """SubmissionSet/Folder uniqueIds are new; a re-registered document uniqueId must carry
    the same hash and size (XDSNonIdenticalHash / XDSNonIdenticalSize). ``stored_objects``
    holds (at least) the registry's objects with one of the submission's uniqueIds."""
    errors: dict[str, E.XdsError] = {}
    docs = {d.unique_id: d for d in sub.documents if d.unique_id}
    packages = {p.unique_id: p for p in [*sub.submission_sets, *sub.folders] if p.unique_id}
    for stored in stored_objects:
        if stored.unique_id is None or stored.unique_id in errors:
            continue
        if stored.unique_id in packages:
            errors[stored.unique_id] = E.XdsError(E.DUPLICATE_UNIQUE_ID_IN_REGISTRY,
                                     f"uniqueId {stored.unique_id} is already used by a "
                                     f"{stored.kind.name.replace('_', ' ').title()} in the "
                                     "registry", stored.unique_id)
        elif stored.unique_id in docs and stored.kind in DOCUMENT_KINDS:
            de = docs[stored.unique_id]
            if stored.hash and de.hash and stored.hash.lower() != de.hash.lower():
                errors[stored.unique_id] = E.XdsError(E.NON_IDENTICAL_HASH,
                                         f"document uniqueId {stored.unique_id} is already "
                                         f"registered with hash {stored.hash}, not {de.hash}",
                                         stored.unique_id)
            elif stored.size is not None and de.size and de.size.isdigit() and \
                    stored.size != int(de.size):
                errors[stored.unique_id] = E.XdsError(E.NON_IDENTICAL_SIZE,
                                         f"document uniqueId {stored.unique_id} is already "
                                         f"registered with size {stored.size}, not {de.size}",
                                         stored.unique_id)
        elif stored.unique_id in docs:
            errors[stored.unique_id] = E.XdsError(E.DUPLICATE_UNIQUE_ID_IN_REGISTRY,
                                     f"uniqueId {stored.unique_id} is already used by a "
                                     "SubmissionSet or Folder", stored.unique_id)
    return list(errors.values())


def _ids_to_look_up(sub: Submission, submitted_uuids: set[str]) -> tuple[set[str], set[str],
                                                                      list[str]]:
    """(entryUUIDs to look up, association ends outside the submission, uniqueIds): one
    statement checks them all against the registry's content (:func:`_check_registry`).
    UUIDs the registry has just generated for symbolic ids are not looked up: they cannot
    exist (a collision would still be refused by the unique index)."""
    local_ids = {o.id for o in sub.objects()}
    referenced = {end for a in sub.associations for end in (a.source, a.target)} - local_ids
    unique_ids = [o.unique_id for o in [*sub.documents, *sub.submission_sets, *sub.folders]
                  if o.unique_id]
    return submitted_uuids | referenced, referenced, unique_ids


def _check_registry(sub: Submission, submitted_uuids: set[str], referenced: set[str],
                    found: list[StoredObject], patient: int) -> dict[str, StoredObject]:
    """Every check against the registry's content, on the objects ``found`` by the lookup
    of :func:`_ids_to_look_up`: the entryUUIDs the source chose are new, association ends
    exist (:func:`_check_references`), uniqueIds are new or identical
    (:func:`_check_unique_ids`). Returns the referenced objects already in the registry;
    raises XdsErrors."""
    already = sorted({s.uuid for s in found if s.uuid in submitted_uuids})
    if already:
        raise E.XdsErrors([E.XdsError(E.REGISTRY_METADATA_ERROR,
                                      f"object {u} already exists in the registry", u)
                           for u in already])
    existing = {s.uuid: s for s in found if s.uuid in referenced}
    errors = _check_references(sub, existing, patient) + _check_unique_ids(sub, found)
    if errors:
        raise E.XdsErrors(errors)
    return existing


# ------------------------------------------------------------------ the transaction

def register_submission(conn: Connection, sub: Submission, domain: AffinityDomain) -> None:
    """Validate and store a submission on ``conn`` (ITI-42 / ITI-41); raise XdsErrors.
    Its two reads take one round trip on PostgreSQL (:func:`opendmp.db.pg_pipeline`)."""
    with pg_pipeline(conn):
        registration = begin_registration(conn, sub, domain)
    registration.complete()


@dataclass
class Registration:
    """A submission validated, its symbolic ids replaced by UUIDs and the registry's reads
    sent (:func:`begin_registration`), waiting for :meth:`complete`. Between the two the
    caller may send statements of its own in the same round trip (ITI-41's index rows)."""
    conn: Connection
    sub: Submission
    errors: list[E.XdsError]
    patient_cx: str = ""
    submitted_uuids: set[str] = field(default_factory=set)
    referenced: set[str] = field(default_factory=set)
    reads: Callable[[], tuple[store.PatientRow | None, list[StoredObject]]] | None = None
    # set by check(): the patient's key, the referenced objects, the time, the memberships
    # a replacement adds
    _patient: int = field(init=False, default=0)
    _existing: dict[str, StoredObject] = field(init=False, default_factory=dict)
    _now: str = field(init=False, default="")
    _extra: list[Association] = field(init=False, default_factory=list)

    def complete(self) -> None:
        """:meth:`check`, then :meth:`store`."""
        self.check()
        self.store()

    def check(self) -> None:
        """Check the submission against the registry's content (the reads' results) and
        prepare its rows; raise XdsErrors (the validation's first) when it is refused."""
        if self.errors:
            raise E.XdsErrors(self.errors)
        conn, sub = self.conn, self.sub
        row, found = self.reads()
        self._patient = _patient_key(conn, self.patient_cx, row)
        self._existing = _check_registry(sub, self.submitted_uuids, self.referenced, found,
                                         self._patient)
        self._now = now_dtm()
        for obj in sub.objects():
            obj.status = V.APPROVED
            obj.home = None
        for obj in [*sub.documents, *sub.submission_sets, *sub.folders]:
            # ITI TF-3 §4.1.9 (Metadata Update): every versionable object starts as version
            # 1 of its logical id; a submitted UUID lid is kept.
            obj.lid = obj.lid if _is_uuid(obj.lid) else obj.id
            obj.version = "1"
        for fol in sub.folders:
            fol.last_update_time = self._now
        self._extra = _replacement_folder_memberships(conn, sub, self._existing)

    @property
    def has_side_effects(self) -> bool:
        """Whether :meth:`store` changes objects already in the registry (a replaced
        document, a folder gaining members): those statements go through SQLAlchemy, which
        reads a result at once, so they cannot be sent in a psycopg pipeline. Known after
        :meth:`check`."""
        return bool(self._extra) or any(
            a.type in V.REPLACING or (a.type == V.HAS_MEMBER and a.source in self._existing)
            for a in self.sub.associations)

    def store(self) -> None:
        """Insert the submission's objects and apply its side effects (after :meth:`check`).
        Without side effects only psycopg statements run: inside
        :func:`opendmp.db.pg_pipeline` a unique index's refusal of the insert is raised by
        the pipeline's round trip, where the caller turns it into
        :func:`concurrent_registration`."""
        conn, sub, patient = self.conn, self.sub, self._patient
        rows = [(o, None if isinstance(o, Association) else patient) for o in sub.objects()]
        rows += [(a, None) for a in self._extra]
        try:
            store.insert_objects(conn, rows)
        except (IntegrityError, psycopg.IntegrityError):   # Core, or psycopg (pg_execute)
            raise E.XdsErrors([concurrent_registration()]) from None
        _apply_side_effects(conn, sub, self._existing, self._extra, self._now)


def concurrent_registration() -> E.XdsError:
    """The error of a submission whose insert violated a unique index: another transaction
    registered one of its uniqueIds since the checks read the registry. Raised by the
    insert, or, when it was pipelined (ITI-41), by the COMMIT's round trip."""
    return E.XdsError(E.DUPLICATE_UNIQUE_ID_IN_REGISTRY,
                      "a uniqueId of this submission was registered concurrently")


def begin_registration(conn: Connection, sub: Submission,
                       domain: AffinityDomain) -> Registration:
    """Validate ``sub`` (:mod:`registry.validation`), replace its symbolic ids and send
    what the checks read from the registry: the patient's row, locked (it serializes the
    writers of a patient), and the objects the submission names
    (:func:`registry.store.registration_reads`). Refusals are kept for
    :meth:`Registration.complete`, which raises them."""
    errors = validate_submission(sub, domain)
    if errors:
        return Registration(conn, sub, errors)
    # entryUUIDs chosen by the source; assign_uuids generates the others
    submitted_uuids = {o.id for o in sub.objects() if _is_uuid(o.id)}
    assign_uuids(sub)
    cx = sub.submission_set.patient_id
    try:
        if not domain.patient_domain.accepts(cx):
            return Registration(conn, sub, [E.XdsError(
                E.UNKNOWN_PATIENT_ID, f"patientId {cx} is not issued by an assigning "
                "authority of this affinity domain", cx)])
        canonical = _canonical(cx)
    except HL7TypeError as exc:  # validated above; kept for safety
        return Registration(conn, sub, [E.XdsError(E.REGISTRY_METADATA_ERROR, str(exc))])
    uuids, referenced, unique_ids = _ids_to_look_up(sub, submitted_uuids)
    return Registration(conn, sub, [], cx, submitted_uuids, referenced,
                        store.registration_reads(conn, canonical, uuids, unique_ids))


def _replacement_folder_memberships(conn: Connection, sub: Submission,
                                    existing: dict[str, StoredObject]) -> list[Association]:
    """A replacement joins every folder of the document it replaces (ITI TF-3 §4.1.8.2)."""
    replaced = {a.target: a.source for a in sub.associations
                if a.type in V.REPLACING and a.target in existing}
    if not replaced:
        return []
    extra = []
    for folder_uuid, doc_uuid in store.folders_of_documents(conn, list(replaced)):
        extra.append(Association(id=new_uuid(), status=V.APPROVED, type=V.HAS_MEMBER,
                                 source=folder_uuid, target=replaced[doc_uuid]))
    return extra


def _apply_side_effects(conn: Connection, sub: Submission, existing: dict[str, StoredObject],
                        extra: list[Association], now: str) -> None:
    """Deprecate replaced documents and, with them, their approved addenda and
    transformations (ITI TF-3 §4.1.6.1, CP-ITI-117); refresh lastUpdateTime of folders
    that gained members."""
    replaced = [a.target for a in sub.associations if a.type in V.REPLACING]
    deprecate = replaced + store.approved_dependents(conn, replaced, (V.APND, V.XFRM))
    touched = {a.source for a in [*sub.associations, *extra]
               if a.type == V.HAS_MEMBER and a.source in existing
               and existing[a.source].kind == Kind.FOLDER}
    touched |= {a.source for a in extra}
    blobs = store.load_ebrim(conn, [*deprecate, *touched])
    for uuid in deprecate:
        obj = parse_registry_object(blobs[uuid])
        obj.status = V.DEPRECATED
        store.rewrite_object(conn, obj)
    for uuid in touched:
        fol = parse_registry_object(blobs[uuid])
        fol.last_update_time = now
        store.rewrite_object(conn, fol)


def register_document_set(engine: Engine, domain: AffinityDomain,
                          request: etree._Element) -> bytes:
    """ITI-42 handler body: SubmitObjectsRequest element -> RegistryResponse bytes."""
    try:
        sub = read_submit_objects_request(request)
        with write_transaction(engine) as conn:
            register_submission(conn, sub, domain)
    except E.XdsErrors as failure:
        return E.registry_response(failure.errors)
    return E.registry_response([])
