"""A submitted document's bytes: an MTOM attachment or inline base64 (ITI TF-2b §3.41.4.1.2),
and whether they look like their declared mimeType."""
from __future__ import annotations

import binascii
import re
from typing import Iterator

from lxml import etree

from soapstack.mtom import Attachment, xop_attachment

_WS = re.compile(rb"\s+")
_B64_BLOCK = 4 * 16 * 1024  # base64 characters decoded at a time (64 KiB of content)


def inline_base64_chunks(text: str) -> Iterator[bytes]:
    """Decode an inline base64 xdsb:Document in bounded blocks (whitespace allowed)."""
    pending = b""
    data = text.encode("ascii", "strict")
    for start in range(0, len(data), _B64_BLOCK):
        pending += _WS.sub(b"", data[start:start + _B64_BLOCK])
        usable = len(pending) - len(pending) % 4
        if usable:
            yield binascii.a2b_base64(pending[:usable], strict_mode=True)
            pending = pending[usable:]
    if pending:
        raise binascii.Error("inline base64 document ends with a partial group")


def document_chunks(document: etree._Element, attachments: dict[str, Attachment]
                    ) -> Iterator[bytes]:
    """The content of an ``xdsb:Document``: its XOP attachment, else its inline base64."""
    attachment = xop_attachment(document, attachments)
    if attachment is not None:
        return attachment.chunks()
    try:
        return inline_base64_chunks(document.text or "")
    except UnicodeEncodeError:
        raise binascii.Error("inline document is not base64") from None


#: leading bytes of the formats we can recognise (RFC 3778 PDF, XML 1.0 §2.8, ...).
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/tiff": (b"II*\x00", b"MM\x00*"),
    "application/dicom": (),
}


def content_matches_mime_type(mime_type: str, head: bytes) -> bool:
    """False only when the first bytes contradict ``mime_type``; unknown types pass."""
    mime = mime_type.split(";")[0].strip().lower()
    if mime in ("text/xml", "application/xml") or mime.endswith("+xml"):
        body = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        return not body or body.startswith(b"<")
    signatures = _SIGNATURES.get(mime)
    if signatures:
        return not head or head.startswith(signatures)
    return True
