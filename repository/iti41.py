"""ITI-41 Provide and Register Document Set-b, repository side (ITI TF-2b §3.41.4.1.3).

For each DocumentEntry the repository streams its document (MTOM attachment or inline
base64) into the encrypted store while computing SHA-1 and size, checks any supplied
hash, size, repositoryUniqueId and the mimeType against the content, sets them, and
registers the metadata. Atomicity: the bytes are staged first, made durable on a
background thread while the registration's statements run. With the in-process
registry, one write transaction writes the index row (COMMITTED), the registration and
the CDA summary, commits once the staged files are durable, and the staged file is
renamed into place after the commit. With a remote registry, the index row is STAGED
and the file renamed before the registry is called, and the row COMMITTED after its
Success. On any failure the bytes and the row are removed; what a crash leaves behind is
settled by :mod:`repository.recovery`.
"""
from __future__ import annotations

import binascii
import contextlib
import logging
from concurrent.futures import Future
from typing import Callable

import psycopg
from lxml import etree
from sqlalchemy.exc import IntegrityError

from cda.crosscheck import Intake as CdaIntake
from opendmp import failpoints
from opendmp.db import pg_pipeline, write_transaction
from registry import errors as E
from registry import vocabulary as V
from registry.hl7types import HL7TypeError, parse_cx
from registry.iti42 import concurrent_registration, read_submit_objects_request
from registry.model import DocumentEntry
from soapstack.mtom import Attachment, require_complete
from soapstack.namespaces import LCM, XDSB
from xua.dsg import Intake as DsgIntake

from . import index
from .actor import Repository
from .content import content_matches_mime_type, document_chunks
from .crypto import StoreError
from .storage import StagedDocument

log = logging.getLogger("opendmp.repository")

REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
MISSING_DOCUMENT = "XDSMissingDocument"
MISSING_DOCUMENT_METADATA = "XDSMissingDocumentMetadata"
REPOSITORY_ERROR = "XDSRepositoryError"
REPOSITORY_OUT_OF_RESOURCES = "XDSRepositoryOutOfResources"
REPOSITORY_BUSY = "XDSRepositoryBusy"
REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE = "XDSRepositoryDuplicateUniqueIdInMessage"
SNIFF_BYTES = 512
PATIENT_CX_MAX = 256   # repository_document.patient_cx


def _err(code: str, message: str, location: str | None = None) -> E.XdsError:
    return E.XdsError(code, message, location)


def _documents_by_id(request: etree._Element) -> tuple[dict[str, etree._Element], list[E.XdsError]]:
    docs, errors = {}, []
    for doc in request.iterchildren(f"{{{XDSB}}}Document"):
        doc_id = doc.get("id") or ""
        if doc_id in docs:
            errors.append(_err(REPOSITORY_METADATA_ERROR,
                               f"two xdsb:Document elements have id {doc_id!r}", doc_id))
        docs[doc_id] = doc
    return docs, errors


def _store_one(repo: Repository, de: DocumentEntry, document: etree._Element,
               attachments: dict[str, Attachment], cda: CdaIntake | None = None,
               dsg: DsgIntake | None = None, durable: dict[str, Future] | None = None
               ) -> tuple[StagedDocument | None, list, HeaderCheck | None]:
    """Stream one document into the store and reconcile its metadata with the bytes:
    (staged document, errors, the CDA header check still to run). The header check
    (:mod:`cda.crosscheck`, the costliest) is returned, not run, so that ITI-41 runs it
    while the database works on the transaction's first statements. With ``durable``,
    the document is made durable in the background (its future filed under the
    uniqueId), else before this returns."""
    where = f"DocumentEntry {de.id}"
    cda_sniffer = cda.sniffer(de) if cda is not None else None  # None unless XML
    try:
        chunks = document_chunks(document, attachments)
        with repo.store.begin() as writer:
            head = b""
            for chunk in chunks:
                if len(head) < SNIFF_BYTES:
                    head += chunk[:SNIFF_BYTES - len(head)]
                writer.write(chunk)
                if cda_sniffer is not None:
                    cda_sniffer.feed(chunk)
                if dsg is not None:
                    dsg.feed(de, chunk)
            if durable is None:
                staged = writer.finish()
            else:
                staged, durable[de.unique_id] = writer.finish_in_background()
    except binascii.Error as exc:
        return None, [_err(REPOSITORY_METADATA_ERROR, f"{where}: document content: {exc}",
                           de.id)], None
    except StoreError as exc:
        log.error("cannot store document of %s: %s", de.id, exc)
        return None, [_err(REPOSITORY_OUT_OF_RESOURCES,
                           f"{where}: the repository cannot store the document ({exc})",
                           de.id)], None
    errors = []
    if de.hash is not None and de.hash.lower() != staged.sha1_hex:
        errors.append(_err(REPOSITORY_METADATA_ERROR,
                           f"{where}: hash {de.hash} does not match the document "
                           f"(SHA-1 {staged.sha1_hex})", de.id))
    if de.size is not None and de.size != str(staged.size):
        errors.append(_err(REPOSITORY_METADATA_ERROR,
                           f"{where}: size {de.size} does not match the document "
                           f"({staged.size} bytes)", de.id))
    if de.repository_unique_id not in (None, repo.settings.unique_id):
        errors.append(_err(REPOSITORY_METADATA_ERROR,
                           f"{where}: repositoryUniqueId {de.repository_unique_id} is not this "
                           f"repository ({repo.settings.unique_id})", de.id))
    if de.mime_type and not content_matches_mime_type(de.mime_type, head):
        errors.append(_err(REPOSITORY_METADATA_ERROR,
                           f"{where}: the document's content is not {de.mime_type}", de.id))
    de.hash, de.size, de.repository_unique_id = staged.sha1_hex, str(staged.size), \
        repo.settings.unique_id
    if cda_sniffer is None:
        return staged, errors, None
    # a CDA's header must agree with its metadata (cda.crosscheck)
    return staged, errors, lambda: cda.check(cda_sniffer)


#: a check that returns errors (the CDA header against the DocumentEntry)
HeaderCheck = Callable[[], list[E.XdsError]]


def _run_checks(checks: list[HeaderCheck]) -> list[E.XdsError]:
    return [error for check in checks for error in check()]


def _check_pairing(sub, documents: dict[str, etree._Element]) -> list[E.XdsError]:
    """Every DocumentEntry has its document and every document its DocumentEntry
    (XDSMissingDocument / XDSMissingDocumentMetadata); uniqueIds are not repeated."""
    errors = []
    entries = {de.id: de for de in sub.documents}
    for doc_id in documents.keys() - entries.keys():
        errors.append(_err(MISSING_DOCUMENT_METADATA,
                           f"xdsb:Document {doc_id!r} has no DocumentEntry", doc_id))
    seen: set[str] = set()
    for de in sub.documents:
        if de.object_type == V.ON_DEMAND_DOCUMENT:
            errors.append(_err(REPOSITORY_METADATA_ERROR,
                               f"DocumentEntry {de.id} is On-Demand; ITI-41 provides stable "
                               "documents only", de.id))
        elif de.id not in documents:
            errors.append(_err(MISSING_DOCUMENT, f"DocumentEntry {de.id} has no xdsb:Document",
                               de.id))
        if not de.unique_id:
            errors.append(_err(REPOSITORY_METADATA_ERROR, f"DocumentEntry {de.id} has no "
                               "uniqueId", de.id))
        elif de.unique_id in seen:
            errors.append(_err(REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE,
                               f"uniqueId {de.unique_id} is used by two documents", de.unique_id))
        seen.add(de.unique_id)
    return errors


def provide_and_register(repo: Repository, request: etree._Element,
                         attachments: dict[str, Attachment]) -> bytes:
    """ProvideAndRegisterDocumentSetRequest -> RegistryResponse bytes."""
    staged: dict[str, StagedDocument] = {}   # DocumentEntry uniqueId -> staged bytes
    durable: dict[str, Future] = {}          # uniqueId -> its bytes made durable
    indexed: list[str] = []                  # uniqueIds with a STAGED index row (remote)
    cda = CdaIntake.from_env()
    register_on = getattr(repo.registry, "register_on", None)
    try:
        sor = request.find(f"{{{LCM}}}SubmitObjectsRequest")
        if sor is None:
            raise E.XdsErrors([_err(REPOSITORY_METADATA_ERROR,
                                    "ProvideAndRegisterDocumentSetRequest has no "
                                    "lcm:SubmitObjectsRequest")])
        sub = read_submit_objects_request(sor)
        dsg = DsgIntake.for_submission(sub)  # the submission set's signature (IHE DSG)
        documents, errors = _documents_by_id(request)
        errors += _check_pairing(sub, documents)
        if errors:
            raise E.XdsErrors(errors)
        header_checks: list[HeaderCheck] = []
        for de in sub.documents:
            one, problems, header_check = _store_one(repo, de, documents[de.id], attachments,
                                                     cda, dsg, durable)
            errors += problems
            if one is not None:
                staged[de.unique_id] = one
            if header_check is not None:
                header_checks.append(header_check)
        errors = errors or dsg.check()
        if errors:
            raise E.XdsErrors(errors + _run_checks(header_checks))
        require_complete(attachments)   # the documents streamed in: is the message whole?
        if register_on is not None:
            fresh = _register_in_one_transaction(repo, register_on, sub, staged, durable, cda,
                                                 header_checks)
        else:
            errors = _run_checks(header_checks)
            if errors:
                raise E.XdsErrors(errors)
            _await_durable(durable)
            indexed = _index_documents(repo, sub, staged, durable)
            failpoints.hit("iti41.after_index")
            for uid in indexed:
                repo.store.commit(staged[uid])
            failpoints.hit("iti41.after_store")
            warnings = cda.warnings + repo.registry.register(sub, indexed)
    except E.XdsErrors as failure:
        _undo(repo, staged, indexed, durable)
        return E.registry_response(failure.errors)
    except BaseException:
        _undo(repo, staged, indexed, durable)
        raise
    if register_on is None:
        cda.after_register(repo.engine)
        return E.registry_response(warnings)
    failpoints.hit("iti41.after_commit")
    for uid in fresh:   # recorded and registered: the rename is not fsync'd (store.commit)
        try:
            repo.store.commit(staged[uid])
        except StoreError as exc:   # the answer stands: the recovery sweep moves it later
            log.error("document %s is registered; it stays in staging until the recovery "
                      "sweep moves it: %s", uid, exc)
    return E.registry_response(cda.warnings)


def _register_in_one_transaction(repo: Repository, register_on, sub,
                                 staged: dict[str, StagedDocument],
                                 durable: dict[str, Future], cda: CdaIntake,
                                 header_checks: list[HeaderCheck]) -> list[str]:
    """In-process registry: the index rows (COMMITTED), the registration and the CDA
    summary of the new documents in one write transaction, committed once the staged
    files are durable (their flushes overlap the statements). A crash before its commit
    leaves staged files without rows (the recovery sweep discards them); after it, staged
    files with COMMITTED rows until the caller renames them into place (ITI-43 reads them
    from staging meanwhile; the recovery sweep renames them after a crash). On
    PostgreSQL two round trips (:func:`opendmp.db.pg_pipeline`): ``BEGIN``, the index rows
    and the registry's reads; then the registry insert, the summary rows and ``COMMIT``.
    The CDA header checks run while PostgreSQL works on the first round trip's statements;
    their errors roll the transaction back."""
    with write_transaction(repo.engine) as conn:
        with pg_pipeline(conn):   # BEGIN, index rows and the registry's reads: one round trip
            inserted = index.send_new(conn, _index_row_values(repo, sub, staged,
                                                              index.COMMITTED))
            registration = register_on(conn, sub)
            errors = _run_checks(header_checks)   # CPU while the database works
        if errors:
            raise E.XdsErrors(errors)
        fresh = _index_rows(conn, repo, staged, durable, inserted())
        failpoints.hit("iti41.after_index")
        registration.check()
        # the inserts and the COMMIT in one round trip, unless SQLAlchemy statements follow
        pipelined = not registration.has_side_effects
        try:
            with pg_pipeline(conn) if pipelined else contextlib.nullcontext():
                registration.store()
                cda.after_register(repo.engine, conn, set(fresh))
                _await_durable(durable)
                failpoints.hit("iti41.before_commit")
                conn.get_transaction().commit()
        except (IntegrityError, psycopg.IntegrityError):  # a pipelined insert's refusal
            raise E.XdsErrors([concurrent_registration()]) from None
    return fresh


def _await_durable(durable: dict[str, Future]) -> None:
    """Wait until every staged file is durable; XDSRepositoryOutOfResources if one could
    not be written (its file is already gone)."""
    errors = []
    for uid, done in durable.items():
        try:
            done.result()
        except StoreError as exc:
            log.error("cannot store document %s: %s", uid, exc)
            errors.append(_err(REPOSITORY_OUT_OF_RESOURCES, f"document {uid}: the repository "
                               f"cannot store the document ({exc})", uid))
    if errors:
        raise E.XdsErrors(errors)


def _index_documents(repo: Repository, sub, staged: dict[str, StagedDocument],
                     durable: dict[str, Future]) -> list[str]:
    """Remote registry: STAGED index rows, committed before the registry is called."""
    with write_transaction(repo.engine) as conn:
        inserted = index.add_new(conn, _index_row_values(repo, sub, staged, index.STAGED))
        return _index_rows(conn, repo, staged, durable, inserted)


def _index_row_values(repo: Repository, sub, staged: dict[str, StagedDocument],
                      state: int) -> list[index.IndexedDocument]:
    """The index rows of the staged documents, in ``state``, in uniqueId order (one order
    for every transaction: no lock cycles)."""
    mime = {d.unique_id: d.mime_type for d in sub.documents}
    patient = submitted_patient(sub)
    return [index.IndexedDocument(uid, repo.settings.unique_id, staged[uid].key,
                                  staged[uid].size, staged[uid].sha1_hex, mime[uid], state, 0,
                                  patient)
            for uid in sorted(staged)]


def _index_rows(conn, repo: Repository, staged: dict[str, StagedDocument],
                durable: dict[str, Future], inserted: set[str]) -> list[str]:
    """Settle the staged documents whose index row was not ``inserted``; returns the
    uniqueIds of the new ones. A uniqueId the repository already holds with the same bytes
    is not stored twice; with other bytes it is XDSNonIdenticalHash; one held STAGED (a
    remote registration in progress) is XDSRepositoryBusy."""
    held = [uid for uid in staged if uid not in inserted]
    known = index.lookup(conn, held) if held else {}
    errors = []
    for uid in held:
        existing = known.get(uid)
        if existing is None:    # held a moment ago, removed since (a concurrent undo)
            errors.append(_err(REPOSITORY_BUSY, f"document {uid} is being stored or removed "
                               "by another transaction", uid))
        elif existing.sha1 != staged[uid].sha1_hex:
            errors.append(_err(E.NON_IDENTICAL_HASH,
                               f"document {uid} is already stored with hash {existing.sha1}",
                               uid))
        elif existing.state != index.COMMITTED:
            errors.append(_err(REPOSITORY_BUSY,
                               f"document {uid} is being stored by another transaction", uid))
    if errors:
        raise E.XdsErrors(errors)   # the caller's transaction is rolled back
    for uid in held:                # the same bytes again: nothing new to keep
        _settle(durable.pop(uid, None))
        repo.store.discard(staged.pop(uid))
    return sorted(inserted)


def submitted_patient(sub) -> str | None:
    """The patient the index records for the submission's documents: the SubmissionSet
    patientId as canonical CX (ITI TF-3 §4.2.3.1.7, without CX.5, as the registry keys
    patients). It is the patient the XUA step checked (:func:`opendmp.policy.require_patient`)
    and the one a registry files every object of the submission under (a DocumentEntry
    naming another is XDSPatientIdDoesNotMatch, ITI TF-3 §4.2.2). None when it is absent
    or not a CX (a registry refuses such a submission; a document with no recorded patient
    is never served under a patient-scoped assertion unless the registry knows it)."""
    ss = sub.submission_set
    if ss is None or not ss.patient_id:
        return None
    try:
        cx = parse_cx(ss.patient_id).canonical
    except HL7TypeError:
        return None
    return cx if len(cx) <= PATIENT_CX_MAX else None


def _settle(done: Future | None) -> None:
    """Wait for a background flush, whatever its outcome (a failed one left nothing)."""
    if done is not None:
        try:
            done.result()
        except Exception:  # noqa: BLE001 - best effort: the caller is undoing anyway
            log.exception("background flush of a staged document failed")


def _undo(repo: Repository, staged: dict[str, StagedDocument], indexed: list[str],
          durable: dict[str, Future]) -> None:
    """Remove every byte and index row a failed transaction left (best effort: what cannot
    be removed now is settled by the recovery sweep), once the background flushes ended."""
    for done in durable.values():
        _settle(done)
    for s in staged.values():
        try:
            repo.store.delete(s.key) or repo.store.discard(s)
        except Exception:  # noqa: BLE001 - the recovery sweep removes what is left
            log.exception("cannot remove document %s after a failed ITI-41", s.key)
    if indexed:
        try:
            with write_transaction(repo.engine) as conn:
                index.forget(conn, indexed)
        except Exception:  # noqa: BLE001
            log.exception("cannot remove index rows after a failed ITI-41")
