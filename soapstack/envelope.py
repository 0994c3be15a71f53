"""SOAP 1.2 envelope: parsing requests, building responses and faults.

SOAP 1.2 Part 1 (W3C Rec. 2007): §5 envelope, §5.2.3 ``mustUnderstand``, §5.4 faults.
WS-Addressing 1.0 SOAP Binding (W3C Rec. 2006): §3 message addressing headers,
§6 faults. ITI TF-2x Appendix V: IHE web services use SOAP 1.2 + WS-Addressing.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from lxml import etree

from .namespaces import SOAP12, WSA, qn
from .xml import XmlRejected, parse_xml

#: WS-Addressing headers this stack processes (so mustUnderstand on them is honoured).
UNDERSTOOD_HEADERS = {
    qn(WSA, name)
    for name in ("Action", "MessageID", "To", "ReplyTo", "From", "FaultTo", "RelatesTo")
}
WSA_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"


class SoapFault(Exception):
    """A SOAP 1.2 fault (Part 1 §5.4). ``code`` is Sender, Receiver, MustUnderstand or
    VersionMismatch; ``subcode`` an optional Clark-notation QName."""

    def __init__(
        self,
        reason: str,
        code: str = "Sender",
        subcode: str | None = None,
        not_understood: list[str] | None = None,
        action: str = WSA_FAULT_ACTION,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.subcode = subcode
        self.not_understood = not_understood or []
        self.action = action

    @property
    def http_status(self) -> int:
        """SOAP 1.2 Part 2 §7.5.1.2: Sender faults are 400, everything else 500."""
        return 400 if self.code == "Sender" else 500


class RequestTooLarge(Exception):
    """A body reader saw more bytes than its limit (re-exported by :mod:`soapstack.wsgi`)."""


@dataclass
class SoapRequest:
    """A parsed SOAP 1.2 request as actors see it."""

    envelope: etree._Element
    header: etree._Element | None
    body: etree._Element
    action: str
    message_id: str | None
    to: str | None
    #: attachments by Content-ID (MTOM/XOP), each a :class:`soapstack.mtom.Attachment`.
    attachments: dict = field(default_factory=dict)
    #: transport facts an actor or audit may need (peer address, TLS subject).
    remote_addr: str | None = None
    peer_subject: str | None = None
    #: who is asking, for whom, how (:class:`xua.identity.IdentityContext`), set by the
    #: XUA step from the verified assertion; None without one (XUA optional/off).
    identity: object | None = None

    @property
    def payload(self) -> etree._Element:
        """The first element child of the Body (the operation's request element)."""
        for child in self.body:
            if isinstance(child.tag, str):
                return child
        raise SoapFault("the SOAP Body is empty")


@dataclass
class SoapResponse:
    """What an actor returns: the Body content (bytes or chunks) and its wsa:Action.

    ``attachments`` (``soapstack.mtom.OutgoingAttachment`` or ``(content_id,
    content_type, size, chunks)`` tuples) makes the answer MTOM/XOP; an empty list
    still answers MTOM (root part only), ``None`` answers plain SOAP.
    """

    action: str
    body: bytes | Iterable[bytes]
    attachments: list | None = None


def _is_true(value: str | None) -> bool:
    return value in ("true", "1")


def parse_envelope(data: bytes, understood: frozenset[str] = frozenset()) -> SoapRequest:
    """Parse a SOAP 1.2 envelope, check mustUnderstand headers and WS-Addressing.

    ``understood``: further header QNames a later step processes (``wsse:Security`` when
    XUA verification is on, :mod:`soapstack.wssecurity`)."""
    try:
        root = parse_xml(data)
    except XmlRejected as exc:
        raise SoapFault(str(exc)) from None
    if root.tag != qn(SOAP12, "Envelope"):
        if etree.QName(root).localname == "Envelope":
            raise SoapFault(
                f"not a SOAP 1.2 envelope (namespace {etree.QName(root).namespace})",
                code="VersionMismatch",
            )
        raise SoapFault(f"expected a SOAP 1.2 Envelope, found {etree.QName(root).localname}")
    header = root.find(qn(SOAP12, "Header"))
    body = root.find(qn(SOAP12, "Body"))
    if body is None:
        raise SoapFault("the SOAP Envelope has no Body")
    not_understood = []
    action = message_id = to = None
    if header is not None:
        for block in header:
            if not isinstance(block.tag, str):
                continue
            if block.tag == qn(WSA, "Action"):
                action = (block.text or "").strip()
            elif block.tag == qn(WSA, "MessageID"):
                message_id = (block.text or "").strip()
            elif block.tag == qn(WSA, "To"):
                to = (block.text or "").strip()
            elif block.tag not in UNDERSTOOD_HEADERS and block.tag not in understood and _is_true(
                block.get(qn(SOAP12, "mustUnderstand"))
            ):
                not_understood.append(block.tag)
    if not_understood:
        names = ", ".join(etree.QName(t).localname for t in not_understood)
        raise SoapFault(
            f"header(s) not understood: {names}",
            code="MustUnderstand",
            not_understood=not_understood,
        )
    if not action:
        raise SoapFault(
            "WS-Addressing header wsa:Action is required (ITI TF-2x V.3.2.1)",
            subcode=qn(WSA, "MessageAddressingHeaderRequired"),
        )
    return SoapRequest(root, header, body, action, message_id or None, to)


# ---------------------------------------------------------------- responses

_ENV_OPEN = (
    f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope xmlns:env="{SOAP12}" '
    f'xmlns:wsa="{WSA}"><env:Header>'
).encode()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def response_header(action: str, relates_to: str | None) -> bytes:
    """The envelope start and WS-Addressing response headers (WS-A SOAP Binding §3)."""
    parts = [
        f'<wsa:Action env:mustUnderstand="true">{_escape(action)}</wsa:Action>',
        f"<wsa:MessageID>urn:uuid:{uuid.uuid4()}</wsa:MessageID>",
    ]
    if relates_to:
        parts.append(f"<wsa:RelatesTo>{_escape(relates_to)}</wsa:RelatesTo>")
    parts.append("</env:Header><env:Body>")
    return _ENV_OPEN + "".join(parts).encode()


_ENV_CLOSE = b"</env:Body></env:Envelope>"


def envelope_chunks(
    action: str, relates_to: str | None, body: bytes | Iterable[bytes]
) -> Iterator[bytes]:
    """Yield a complete response envelope around ``body`` (bytes or an iterable of chunks)."""
    yield response_header(action, relates_to)
    if isinstance(body, (bytes, bytearray)):
        yield bytes(body)
    else:
        yield from body
    yield _ENV_CLOSE


def fault_body(fault: SoapFault) -> bytes:
    """The env:Fault element (SOAP 1.2 Part 1 §5.4)."""
    env = etree.Element(qn(SOAP12, "Fault"), nsmap={"env": SOAP12})
    code = etree.SubElement(env, qn(SOAP12, "Code"))
    etree.SubElement(code, qn(SOAP12, "Value")).text = f"env:{fault.code}"
    if fault.subcode:
        ns = etree.QName(fault.subcode).namespace
        local = etree.QName(fault.subcode).localname
        sub = etree.SubElement(code, qn(SOAP12, "Subcode"), nsmap={"f": ns} if ns else None)
        etree.SubElement(sub, qn(SOAP12, "Value")).text = f"f:{local}" if ns else local
    reason = etree.SubElement(env, qn(SOAP12, "Reason"))
    text = etree.SubElement(reason, qn(SOAP12, "Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = fault.reason
    return etree.tostring(env)


def fault_envelope(fault: SoapFault, relates_to: str | None = None) -> bytes:
    """A complete fault message; MustUnderstand faults carry env:NotUnderstood headers."""
    head = response_header(fault.action, relates_to)
    if fault.not_understood:
        blocks = b"".join(
            etree.tostring(_not_understood(tag)) for tag in fault.not_understood
        )
        head = head.replace(b"</env:Header>", blocks + b"</env:Header>", 1)
    return head + fault_body(fault) + _ENV_CLOSE


def _not_understood(tag: str) -> etree._Element:
    qname = etree.QName(tag)
    el = etree.Element(qn(SOAP12, "NotUnderstood"), nsmap={"env": SOAP12, "h": qname.namespace})
    el.set("qname", f"h:{qname.localname}")
    return el
