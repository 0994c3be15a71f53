"""Metadata validation of a submission, without the database (ITI TF-3 §4.1-4.3).

Small composable validators, one per object type and one per HL7 data type
(:mod:`registry.hl7types`), each yielding :class:`~registry.errors.XdsError` with the IHE
code and a readable message. Checks that need the registry's content (known patients,
association targets, uniqueIds already used) are in :mod:`registry.iti42`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterator

from . import errors as E
from . import vocabulary as V
from .affinity import AffinityDomain
from .hl7types import (
    HL7TypeError,
    check_xcn,
    check_xon,
    check_xtn,
    is_oid,
    is_uuid_urn,
    parse_cx,
    parse_dtm,
)
from .model import Author, Code, DocumentEntry, Folder, RegistryObject, Submission, SubmissionSet

_HASH = re.compile(r"[0-9a-fA-F]{40}")
_MIME = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*")
_LANG = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")
_DE_UNIQUE_ID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+(\^[^\s^]{1,64})?")

ERR = E.REGISTRY_METADATA_ERROR


def _err(message: str, location: str | None, code: str = ERR) -> E.XdsError:
    return E.XdsError(code, message, location)


def _where(obj: RegistryObject, what: str) -> str:
    return f"{what} {obj.id}"


def _check_dtm(value: str | None, name: str, where: str, required: bool) -> Iterator[E.XdsError]:
    if value is None:
        if required:
            yield _err(f"{where}: {name} is required", where)
        return
    try:
        parse_dtm(value)
    except HL7TypeError as exc:
        yield _err(f"{where}: {name} is not a valid DTM: {exc}", where)


def _check_code(code: Code | None, attribute: str, where: str, domain: AffinityDomain,
                required: bool) -> Iterator[E.XdsError]:
    if code is None:
        if required:
            yield _err(f"{where}: {attribute} is required", where)
        return
    if not code.code or not code.scheme:
        yield _err(f"{where}: {attribute} needs a nodeRepresentation and a codingScheme slot", where)
        return
    if not code.display:
        yield _err(f"{where}: {attribute} {code.code} has no display name (Name)", where)
    if not domain.value_sets.check(attribute, code.code, code.scheme):
        yield _err(
            f"{where}: {attribute} {code.code} (scheme {code.scheme}) is not in the affinity "
            "domain's value set", where)


def _check_patient_id(value: str | None, name: str, where: str,
                      required: bool = True) -> Iterator[E.XdsError]:
    if value is None:
        if required:
            yield _err(f"{where}: {name} is required", where)
        return
    try:
        parse_cx(value)
    except HL7TypeError as exc:
        yield _err(f"{where}: {name} is not a valid CX: {exc}", where)


def _check_authors(authors: list[Author], where: str) -> Iterator[E.XdsError]:
    for a in authors:
        if not (a.person or a.institutions or a.roles or a.specialties or a.telecoms):
            yield _err(f"{where}: an author has none of authorPerson, authorInstitution, "
                       "authorRole, authorSpecialty, authorTelecommunication", where)
        checks = ([(check_xcn, a.person, "authorPerson")] if a.person else []) + \
                 [(check_xon, v, "authorInstitution") for v in a.institutions] + \
                 [(check_xtn, v, "authorTelecommunication") for v in a.telecoms]
        for check, value, name in checks:
            try:
                if check is check_xcn:
                    check(value, require_assigning_authority=False)
                else:
                    check(value)
            except HL7TypeError as exc:
                yield _err(f"{where}: {name} {value!r}: {exc}", where)


def _check_common(obj: RegistryObject, where: str) -> Iterator[E.XdsError]:
    for s in obj.extra_slots:
        if not s.name:
            yield _err(f"{where}: a Slot has no name", where)


def check_document_entry(de: DocumentEntry, domain: AffinityDomain) -> Iterator[E.XdsError]:
    """DocumentEntry attributes (ITI TF-3 Table 4.2.3.2-1, ITI-42 optionality Table 4.3.1-3)."""
    where = _where(de, "DocumentEntry")
    yield from _check_common(de, where)
    if de.object_type not in V.DOCUMENT_OBJECT_TYPES:
        yield _err(f"{where}: objectType {de.object_type!r} is not a DocumentEntry type", where)
    stable = not de.on_demand
    if not de.mime_type:
        yield _err(f"{where}: mimeType is required", where)
    elif not _MIME.fullmatch(de.mime_type):
        yield _err(f"{where}: mimeType {de.mime_type!r} is not a MIME type", where)
    elif not domain.value_sets.check("mimeType", de.mime_type, None):
        yield _err(f"{where}: mimeType {de.mime_type} is not accepted by the affinity domain", where)
    if not de.unique_id:
        yield _err(f"{where}: uniqueId is required", where)
    elif len(de.unique_id) > 128 or not _DE_UNIQUE_ID.fullmatch(de.unique_id):
        yield _err(f"{where}: uniqueId {de.unique_id!r} is not an OID with optional ^extension "
                   "(at most 128 characters)", where)
    yield from _check_patient_id(de.patient_id, "patientId", where)
    yield from _check_patient_id(de.source_patient_id, "sourcePatientId", where)
    for name, attr, required in (("classCode", "class_code", True), ("typeCode", "type_code", True),
                                 ("formatCode", "format_code", True),
                                 ("healthcareFacilityTypeCode", "healthcare_facility_type_code", True),
                                 ("practiceSettingCode", "practice_setting_code", True)):
        yield from _check_code(getattr(de, attr), name, where, domain, required)
    if not de.confidentiality_codes:
        yield _err(f"{where}: confidentialityCode is required", where)
    for code in de.confidentiality_codes:
        yield from _check_code(code, "confidentialityCode", where, domain, True)
    for code in de.event_codes:
        yield from _check_code(code, "eventCodeList", where, domain, True)
    yield from _check_dtm(de.creation_time, "creationTime", where, required=stable)
    yield from _check_dtm(de.service_start_time, "serviceStartTime", where, required=False)
    yield from _check_dtm(de.service_stop_time, "serviceStopTime", where, required=False)
    if de.language_code is None:
        yield _err(f"{where}: languageCode is required", where)
    elif not _LANG.fullmatch(de.language_code):
        yield _err(f"{where}: languageCode {de.language_code!r} is not an RFC 3066 tag", where)
    if stable:
        if de.hash is None:
            yield _err(f"{where}: hash is required", where)
        elif not _HASH.fullmatch(de.hash):
            yield _err(f"{where}: hash {de.hash!r} is not a hex SHA-1", where)
        if de.size is None:
            yield _err(f"{where}: size is required", where)
        elif not de.size.isdigit():
            yield _err(f"{where}: size {de.size!r} is not an integer", where)
    if not de.repository_unique_id:
        yield _err(f"{where}: repositoryUniqueId is required", where)
    elif not is_oid(de.repository_unique_id):
        yield _err(f"{where}: repositoryUniqueId {de.repository_unique_id!r} is not an OID", where)
    if de.legal_authenticator:
        try:
            check_xcn(de.legal_authenticator, require_assigning_authority=False)
        except HL7TypeError as exc:
            yield _err(f"{where}: legalAuthenticator: {exc}", where)
    if de.document_availability not in (None, V.ONLINE, V.OFFLINE):
        yield _err(f"{where}: documentAvailability {de.document_availability!r} is unknown", where)
    yield from _check_authors(de.authors, where)


def _check_oid(value: str | None, name: str, where: str) -> Iterator[E.XdsError]:
    if not value:
        yield _err(f"{where}: {name} is required", where)
    elif not is_oid(value):
        yield _err(f"{where}: {name} {value!r} is not an OID", where)


def check_submission_set(ss: SubmissionSet, domain: AffinityDomain) -> Iterator[E.XdsError]:
    """SubmissionSet attributes (ITI TF-3 Table 4.2.3.3-1)."""
    where = _where(ss, "SubmissionSet")
    yield from _check_common(ss, where)
    yield from _check_oid(ss.unique_id, "uniqueId", where)
    yield from _check_oid(ss.source_id, "sourceId", where)
    yield from _check_patient_id(ss.patient_id, "patientId", where)
    yield from _check_dtm(ss.submission_time, "submissionTime", where, required=True)
    yield from _check_code(ss.content_type_code, "contentTypeCode", where, domain, True)
    yield from _check_authors(ss.authors, where)


def check_folder(fol: Folder, domain: AffinityDomain) -> Iterator[E.XdsError]:
    """Folder attributes (ITI TF-3 Table 4.2.3.4-1)."""
    where = _where(fol, "Folder")
    yield from _check_common(fol, where)
    yield from _check_oid(fol.unique_id, "uniqueId", where)
    yield from _check_patient_id(fol.patient_id, "patientId", where)
    if not fol.codes:
        yield _err(f"{where}: codeList needs at least one code", where)
    for code in fol.codes:
        yield from _check_code(code, "folderCodeList", where, domain, True)


def check_structure(sub: Submission) -> Iterator[E.XdsError]:
    """One submission set, unique ids and uniqueIds, associations well formed, every
    document and folder a member of the submission set (ITI TF-3 §4.1.4, §4.2.2)."""
    if len(sub.submission_sets) != 1:
        yield _err(f"a submission must contain exactly one SubmissionSet, found "
                   f"{len(sub.submission_sets)}", None)
    ids = Counter(o.id for o in sub.objects() if o.id)  # id-less objects get a UUID later
    for obj_id, n in ids.items():
        if n > 1:
            yield _err(f"id {obj_id} is used by {n} objects in the submission", obj_id)
    unique_ids = Counter(o.unique_id for o in [*sub.submission_sets, *sub.documents, *sub.folders]
                         if o.unique_id)
    for uid, n in unique_ids.items():
        if n > 1:
            yield _err(f"uniqueId {uid} appears {n} times in the submission", uid,
                       E.REGISTRY_DUPLICATE_UNIQUE_ID_IN_MESSAGE)
    ss = sub.submission_set
    members = {a.target for a in sub.associations
               if ss is not None and a.source == ss.id and a.type == V.HAS_MEMBER}
    folder_ids = {f.id for f in sub.folders}
    package_ids = {p.id for p in sub.submission_sets} | folder_ids
    doc_ids = {d.id for d in sub.documents}
    for a in sub.associations:
        where = _where(a, "Association")
        if a.type not in V.ASSOCIATION_TYPES:
            yield _err(f"{where}: associationType {a.type!r} is not an XDS association type", where)
        if not a.source or not a.target:
            yield _err(f"{where}: sourceObject and targetObject are required", where)
        if a.type == V.HAS_MEMBER and (a.target in package_ids - folder_ids
                                       or a.source in doc_ids):
            yield _err(f"{where}: HasMember goes from a SubmissionSet or Folder to a "
                       "DocumentEntry, Folder or Association; a SubmissionSet cannot be a "
                       "member and a DocumentEntry has no members", where)
        if ss is not None and a.source == ss.id and a.type == V.HAS_MEMBER:
            target_is_doc = any(d.id == a.target for d in sub.documents)
            status = a.submission_set_status
            if target_is_doc and status != "Original":
                yield _err(f"{where}: a SubmissionSet-DocumentEntry HasMember association for a "
                           "document in this submission needs SubmissionSetStatus Original", where)
            elif status not in (None, "Original", "Reference"):
                yield _err(f"{where}: SubmissionSetStatus {status!r} is not Original or Reference",
                           where)
    for obj in [*sub.documents, *sub.folders]:
        if obj.id not in members:
            kind = "DocumentEntry" if isinstance(obj, DocumentEntry) else "Folder"
            yield _err(f"{kind} {obj.id} is not a member (HasMember) of the SubmissionSet",
                       obj.id)


def check_patient_consistency(sub: Submission) -> Iterator[E.XdsError]:
    """All objects of a submission name the same patient (XDSPatientIdDoesNotMatch)."""
    ss = sub.submission_set
    if ss is None or not ss.patient_id:
        return
    try:
        expected = parse_cx(ss.patient_id).canonical
    except HL7TypeError:
        return
    for obj in [*sub.documents, *sub.folders]:
        try:
            pid = parse_cx(obj.patient_id).canonical if obj.patient_id else None
        except HL7TypeError:
            continue
        if pid is not None and pid != expected:
            yield _err(f"{obj.id} has patientId {obj.patient_id}, the SubmissionSet "
                       f"{ss.patient_id}", obj.id, E.PATIENT_ID_DOES_NOT_MATCH)


def validate_submission(sub: Submission, domain: AffinityDomain) -> list[E.XdsError]:
    """Every database-independent check of an ITI-42 / ITI-41 submission."""
    found: list[E.XdsError] = []
    found += check_structure(sub)
    for ss in sub.submission_sets:
        found += check_submission_set(ss, domain)
    for de in sub.documents:
        found += check_document_entry(de, domain)
    for fol in sub.folders:
        found += check_folder(fol, domain)
    found += check_patient_consistency(sub)
    for obj in sub.objects():
        if obj.id and not obj.id.startswith("urn:uuid:") and ":" in obj.id:
            found.append(_err(f"id {obj.id} is neither a UUID (urn:uuid:) nor a symbolic id",
                              obj.id))
        elif obj.id.startswith("urn:uuid:") and not is_uuid_urn(obj.id):
            found.append(_err(f"id {obj.id} is not a well-formed urn:uuid", obj.id))
    return found
