"""Document Source side of ITI-41 and Document Consumer side of ITI-43 (ITI TF-2b §3.41,
§3.43): build the requests, send them with MTOM, read the answers. Used by
``opendmp push``, the testkit runner, the tests and the benchmarks."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Iterable

from lxml import etree

from registry.ebrim import submit_objects_request
from registry.model import Submission
from soapstack.client import SoapClient, SoapReply
from soapstack.mtom import OutgoingAttachment, new_content_id, xop_attachment, xop_include_element
from soapstack.namespaces import RS, XDSB

ITI41_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43_ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"


@dataclass
class DocumentContent:
    """The bytes of one document: chunks and their total size (known up front)."""

    mime_type: str
    size: int
    chunks: Iterable[bytes]

    @classmethod
    def of(cls, data: bytes, mime_type: str = "text/xml") -> "DocumentContent":
        return cls(mime_type, len(data), [data])


def provide_and_register_request(sub: Submission, contents: dict[str, DocumentContent],
                                 mtom: bool = True
                                 ) -> tuple[etree._Element, list[OutgoingAttachment]]:
    """xdsb:ProvideAndRegisterDocumentSetRequest for ``sub``; ``contents`` maps each
    DocumentEntry id to its bytes (as MTOM attachments, or inline base64 when not ``mtom``)."""
    req = etree.Element(f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": XDSB})
    req.append(submit_objects_request(sub))
    attachments = []
    for doc_id, content in contents.items():
        doc = etree.SubElement(req, f"{{{XDSB}}}Document", id=doc_id)
        if mtom:
            cid = new_content_id("doc")
            doc.append(xop_include_element(cid))
            attachments.append(OutgoingAttachment(cid, content.mime_type, content.size,
                                                  content.chunks))
        else:
            doc.text = base64.b64encode(b"".join(content.chunks)).decode("ascii")
    return req, attachments


def provide_and_register(client: SoapClient, sub: Submission,
                         contents: dict[str, DocumentContent], mtom: bool = True) -> SoapReply:
    body, attachments = provide_and_register_request(sub, contents, mtom)
    return client.call(ITI41_ACTION, body, attachments=attachments if mtom else None)


def retrieve_request(repository_unique_id: str, document_unique_ids: list[str],
                     home_community_id: str | None = None) -> etree._Element:
    req = etree.Element(f"{{{XDSB}}}RetrieveDocumentSetRequest", nsmap={"xdsb": XDSB})
    for uid in document_unique_ids:
        dr = etree.SubElement(req, f"{{{XDSB}}}DocumentRequest")
        if home_community_id:
            etree.SubElement(dr, f"{{{XDSB}}}HomeCommunityId").text = home_community_id
        etree.SubElement(dr, f"{{{XDSB}}}RepositoryUniqueId").text = repository_unique_id
        etree.SubElement(dr, f"{{{XDSB}}}DocumentUniqueId").text = uid
    return req


@dataclass
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    content: bytes


def retrieve(client: SoapClient, repository_unique_id: str, document_unique_ids: list[str],
             home_community_id: str | None = None) -> tuple[etree._Element, list[RetrievedDocument]]:
    """ITI-43: (the RegistryResponse element, the documents). Reads each document into
    memory: for tools and tests; a streaming consumer uses the reply's attachments."""
    reply = client.call(ITI43_ACTION, retrieve_request(repository_unique_id, document_unique_ids,
                                                       home_community_id))
    try:
        payload = reply.payload
        docs = []
        for dr in payload.iterchildren(f"{{{XDSB}}}DocumentResponse"):
            doc = dr.find(f"{{{XDSB}}}Document")
            attachment = xop_attachment(doc, reply.attachments or {})
            content = attachment.read() if attachment is not None else \
                base64.b64decode(doc.text or "")
            docs.append(RetrievedDocument(dr.findtext(f"{{{XDSB}}}RepositoryUniqueId"),
                                          dr.findtext(f"{{{XDSB}}}DocumentUniqueId"),
                                          dr.findtext(f"{{{XDSB}}}mimeType"), content))
        return payload.find(f"{{{RS}}}RegistryResponse"), docs
    finally:
        reply.close()
