"""ITI-43 Retrieve Document Set, repository side (ITI TF-2b §3.43.4.1.3).

Several DocumentRequests per call; the answer is MTOM with one attachment per document,
streamed from the store with a precomputed Content-Length. Every document is opened once
and checked before a byte is sent: its sealed SHA-1 must equal the one recorded at
ITI-41. Then, while the request's documents add up to at most ``preverify_bytes``
(``OPENDMP_RETRIEVE_PREVERIFY_BYTES``, 1 MiB), each is decrypted in full (every AES-GCM
chunk authenticated), hashed and kept in memory for the answer: a corrupted file is
reported (XDSRepositoryError), not served, and its bytes are decrypted once. The others
are verified while they stream, chunk by chunk (AES-GCM) and by SHA-1 before the last
chunk: damage found there cuts the answer short, so no wrong byte reaches the consumer
as a complete document, but it cannot become an error message.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from xml.sax.saxutils import escape

from lxml import etree

from opendmp import policy
from opendmp.db import read_connection
from registry import errors as E
from soapstack.envelope import SoapResponse
from soapstack.mtom import OutgoingAttachment, new_content_id, xop_include
from soapstack.namespaces import XDSB

from . import index
from .crypto import StoreCorruption, StoreError, verify_sha1
from .actor import Repository
from .iti41 import REPOSITORY_ERROR, REPOSITORY_METADATA_ERROR

log = logging.getLogger("opendmp.repository")

ACTION_RESPONSE = "urn:ihe:iti:2007:RetrieveDocumentSetResponse"
DOCUMENT_UNIQUE_ID_ERROR = "XDSDocumentUniqueIdError"
UNKNOWN_REPOSITORY_ID = "XDSUnknownRepositoryId"


@dataclass(frozen=True)
class DocumentRequest:
    home_community_id: str | None
    repository_unique_id: str
    document_unique_id: str


def read_request(request: etree._Element) -> list[DocumentRequest]:
    out = []
    for dr in request.iterchildren(f"{{{XDSB}}}DocumentRequest"):
        out.append(DocumentRequest(
            (dr.findtext(f"{{{XDSB}}}HomeCommunityId") or "").strip() or None,
            (dr.findtext(f"{{{XDSB}}}RepositoryUniqueId") or "").strip(),
            (dr.findtext(f"{{{XDSB}}}DocumentUniqueId") or "").strip(),
        ))
    return out


def _read_verified(reader, expected_sha1: str) -> list[bytes]:
    """Decrypt a whole document (each chunk authenticated) and check its SHA-1."""
    chunks = list(reader)
    h = hashlib.sha1()
    for chunk in chunks:
        h.update(chunk)
    if h.hexdigest() != expected_sha1:
        raise StoreCorruption(f"content SHA-1 {h.hexdigest()} is not {expected_sha1}")
    return chunks


def retrieve_document_set(repo: Repository, request: etree._Element,
                          home_community_id: str | None, identity=None) -> SoapResponse:
    """RetrieveDocumentSetRequest -> MTOM RetrieveDocumentSetResponse. Documents the
    ``identity`` (the XUA context) may not see refuse the request
    (:func:`opendmp.policy.require_documents`, a SecurityFault)."""
    requests = read_request(request)
    errors: list[E.XdsError] = []
    if not requests:
        errors.append(E.XdsError(REPOSITORY_METADATA_ERROR,
                                 "RetrieveDocumentSetRequest has no DocumentRequest"))
    wanted = [r for r in requests if _addressed_here(r, repo, home_community_id, errors)]
    # one statement (two with an identity to check): no transaction block needed
    with read_connection(repo.engine) as conn:
        found = index.lookup(conn, [r.document_unique_id for r in wanted])
        policy.require_documents(identity, conn, {u: d.patient_cx for u, d in found.items()
                                                  if d.state == index.COMMITTED})
    responses, attachments = [], []
    budget = repo.settings.preverify_bytes   # bytes this answer may hold in memory
    for r in wanted:
        doc = found.get(r.document_unique_id)
        if doc is None or doc.state != index.COMMITTED:
            errors.append(E.XdsError(DOCUMENT_UNIQUE_ID_ERROR,
                                     f"document {r.document_unique_id} is not in repository "
                                     f"{repo.settings.unique_id}", r.document_unique_id))
            continue
        try:
            reader = repo.store.open(doc.storage_key, include_staged=True)
            if reader.sha1_hex != doc.sha1:
                reader.close()
                raise StoreCorruption(f"stored SHA-1 {reader.sha1_hex} is not {doc.sha1}")
            if doc.size <= budget:
                budget -= doc.size
                body = _read_verified(reader, doc.sha1)
            else:
                body = verify_sha1(reader, doc.sha1)
        except StoreError as exc:
            log.error("document %s cannot be served: %s", doc.unique_id, exc)
            errors.append(E.XdsError(REPOSITORY_ERROR,
                                     f"document {doc.unique_id} is damaged in the repository and "
                                     "is not served", doc.unique_id))
            continue
        cid = new_content_id("doc")
        attachments.append(OutgoingAttachment(cid, doc.mime_type, doc.size, body))
        responses.append(_document_response(r, doc, cid))
    if not errors:
        status = E.SUCCESS
    elif responses:
        status = E.PARTIAL_SUCCESS
    else:
        status = E.FAILURE
    body = (f'<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="{XDSB}">'.encode()
            + E.registry_response(errors, status) + b"".join(responses)
            + b"</xdsb:RetrieveDocumentSetResponse>")
    return SoapResponse(ACTION_RESPONSE, body, attachments=attachments)


def _addressed_here(r: DocumentRequest, repo: Repository, home: str | None,
                    errors: list[E.XdsError]) -> bool:
    if r.repository_unique_id != repo.settings.unique_id:
        errors.append(E.XdsError(UNKNOWN_REPOSITORY_ID,
                                 f"repositoryUniqueId {r.repository_unique_id!r} is not this "
                                 f"repository ({repo.settings.unique_id})",
                                 r.repository_unique_id))
        return False
    if r.home_community_id and home and r.home_community_id != home:
        errors.append(E.XdsError(E.UNKNOWN_COMMUNITY,
                                 f"homeCommunityId {r.home_community_id} is not this community "
                                 f"({home})", r.home_community_id))
        return False
    return True


def _document_response(r: DocumentRequest, doc: index.IndexedDocument, cid: str) -> bytes:
    home = (f"<xdsb:HomeCommunityId>{escape(r.home_community_id)}</xdsb:HomeCommunityId>"
            if r.home_community_id else "")
    return (f"<xdsb:DocumentResponse>{home}"
            f"<xdsb:RepositoryUniqueId>{escape(doc.repository_unique_id)}</xdsb:RepositoryUniqueId>"
            f"<xdsb:DocumentUniqueId>{escape(doc.unique_id)}</xdsb:DocumentUniqueId>"
            f"<xdsb:mimeType>{escape(doc.mime_type)}</xdsb:mimeType>"
            f"<xdsb:Document>{xop_include(cid)}</xdsb:Document></xdsb:DocumentResponse>").encode()
