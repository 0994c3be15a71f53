"""ITI-41 Provide and Register Document Set-b, repository side (ITI TF-2b §3.41.4.1.3).

For each DocumentEntry the repository streams its document (MTOM attachment or inline
base64) into the encrypted store while computing SHA-1 and size, checks any supplied
hash, size, repositoryUniqueId and the mimeType against the content, sets them, and
registers the metadata. Atomicity: the index row is STAGED before the bytes are put in
place, and COMMITTED together with the registration (in-process) or right after the
remote registry's Success; on any failure the bytes and the row are removed, and what a
crash leaves behind is settled by :mod:`repository.recovery`.
"""
from __future__ import annotations

import binascii
import logging
from lxml import etree
from sqlalchemy.exc import IntegrityError

from cda.crosscheck import Intake as CdaIntake
from opendmp import failpoints
from opendmp.db import read_transaction, write_transaction
from registry import errors as E
from registry import vocabulary as V
from registry.iti42 import read_submit_objects_request
from registry.model import DocumentEntry
from soapstack.mtom import Attachment
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
               dsg: DsgIntake | None = None) -> tuple[StagedDocument | None, list]:
    """Stream one document into the store and reconcile its metadata with the bytes."""
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
            staged = writer.finish()
    except binascii.Error as exc:
        return None, [_err(REPOSITORY_METADATA_ERROR, f"{where}: document content: {exc}", de.id)]
    except StoreError as exc:
        log.error("cannot store document of %s: %s", de.id, exc)
        return None, [_err(REPOSITORY_OUT_OF_RESOURCES,
                           f"{where}: the repository cannot store the document ({exc})", de.id)]
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
    if cda_sniffer is not None:  # a CDA's header must agree with its metadata (cda.crosscheck)
        errors += cda.check(cda_sniffer)
    de.hash, de.size, de.repository_unique_id = staged.sha1_hex, str(staged.size), \
        repo.settings.unique_id
    return staged, errors


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
    indexed: list[str] = []                  # uniqueIds with a STAGED index row
    cda = CdaIntake.from_env()
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
        for de in sub.documents:
            one, problems = _store_one(repo, de, documents[de.id], attachments, cda, dsg)
            errors += problems
            if one is not None:
                staged[de.unique_id] = one
        errors = errors or dsg.check()
        if errors:
            raise E.XdsErrors(errors)
        indexed = _index_documents(repo, sub, staged)
        failpoints.hit("iti41.after_index")
        for uid in indexed:
            repo.store.commit(staged[uid])
        failpoints.hit("iti41.after_store")
        warnings = cda.warnings + repo.registry.register(sub, indexed)
    except E.XdsErrors as failure:
        _undo(repo, staged, indexed)
        return E.registry_response(failure.errors)
    except BaseException:
        _undo(repo, staged, indexed)
        raise
    cda.after_register(repo.engine)
    return E.registry_response(warnings)


def _index_documents(repo: Repository, sub, staged: dict[str, StagedDocument]) -> list[str]:
    """Stage index rows for new documents. A uniqueId the repository already holds with the
    same bytes is not stored twice; with other bytes it is XDSNonIdenticalHash."""
    with read_transaction(repo.engine) as conn:
        known = index.lookup(conn, list(staged))
    errors, fresh = [], []
    for de in sub.documents:
        uid = de.unique_id
        existing = known.get(uid)
        if existing is None:
            fresh.append(uid)
        elif existing.sha1 != staged[uid].sha1_hex:
            errors.append(_err(E.NON_IDENTICAL_HASH,
                               f"document {uid} is already stored with hash {existing.sha1}",
                               uid))
        elif existing.state != index.COMMITTED:
            errors.append(_err(REPOSITORY_BUSY,
                               f"document {uid} is being stored by another transaction", uid))
        else:
            repo.store.discard(staged.pop(uid))
    if errors:
        raise E.XdsErrors(errors)
    rows = [index.IndexedDocument(uid, repo.settings.unique_id, staged[uid].key,
                                  staged[uid].size, staged[uid].sha1_hex,
                                  next(d.mime_type for d in sub.documents if d.unique_id == uid),
                                  index.STAGED, 0) for uid in fresh]
    try:
        with write_transaction(repo.engine) as conn:
            index.stage(conn, rows)
    except IntegrityError:
        raise E.XdsErrors([_err(REPOSITORY_BUSY,
                                "a document of this submission is being stored concurrently")]) \
            from None
    return fresh


def _undo(repo: Repository, staged: dict[str, StagedDocument], indexed: list[str]) -> None:
    """Remove every byte and index row a failed transaction left (best effort: what cannot
    be removed now is settled by the recovery sweep)."""
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
