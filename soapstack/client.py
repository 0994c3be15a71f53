"""A small SOAP 1.2 + WS-Addressing client (sources, consumers, repository -> registry).

ITI TF-2x Appendix V: every request carries wsa:Action, wsa:MessageID, wsa:ReplyTo
(anonymous) and wsa:To. The answer is parsed with the same hostile-input-safe parser
as requests; SOAP faults become :class:`SoapFault` exceptions. Requests with
``attachments`` go out as MTOM/XOP with a known Content-Length (streamed); MTOM
replies are parsed as they stream in, their parts spooled (:mod:`soapstack.mtom`).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import httpx
from lxml import etree

from .envelope import ANONYMOUS, RequestTooLarge, SoapFault
from .mtom import READ_SIZE, MtomParser, close_attachments, mtom_message
from .namespaces import SOAP12, WSA, qn
from .xml import XmlRejected, parse_xml

#: largest answer a client accepts (an ITI-43 reply carries whole documents).
DEFAULT_MAX_REPLY = 1024 * 1024 * 1024


def build_envelope(action: str, to: str, body: etree._Element | bytes,
                   headers: list[etree._Element] | None = None,
                   message_id: str | None = None) -> bytes:
    """A SOAP 1.2 request envelope with WS-Addressing headers around ``body``."""
    env = etree.Element(qn(SOAP12, "Envelope"), nsmap={"soap": SOAP12, "wsa": WSA})
    header = etree.SubElement(env, qn(SOAP12, "Header"))
    a = etree.SubElement(header, qn(WSA, "Action"))
    a.set(qn(SOAP12, "mustUnderstand"), "true")
    a.text = action
    etree.SubElement(header, qn(WSA, "MessageID")).text = message_id or f"urn:uuid:{uuid.uuid4()}"
    reply = etree.SubElement(header, qn(WSA, "ReplyTo"))
    etree.SubElement(reply, qn(WSA, "Address")).text = ANONYMOUS
    t = etree.SubElement(header, qn(WSA, "To"))
    t.set(qn(SOAP12, "mustUnderstand"), "true")
    t.text = to
    for h in headers or []:
        header.append(h)
    soap_body = etree.SubElement(env, qn(SOAP12, "Body"))
    if isinstance(body, (bytes, bytearray)):
        body = parse_xml(bytes(body))
    soap_body.append(body)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


@dataclass
class SoapReply:
    status_code: int
    envelope: etree._Element
    action: str | None
    #: MTOM reply parts by Content-ID (:class:`soapstack.mtom.Attachment`); call close().
    attachments: dict = field(default_factory=dict)

    def close(self) -> None:
        close_attachments(self.attachments)

    @property
    def payload(self) -> etree._Element:
        body = self.envelope.find(qn(SOAP12, "Body"))
        return next(c for c in body if isinstance(c.tag, str))


def parse_reply(status_code: int, content: bytes, attachments: dict | None = None) -> SoapReply:
    """Parse a SOAP 1.2 answer; raise SoapFault for env:Fault."""
    try:
        env = parse_xml(content)
    except XmlRejected as exc:
        close_attachments(attachments)
        raise SoapFault(f"HTTP {status_code}: unreadable answer: {exc}", code="Receiver") from None
    body = env.find(qn(SOAP12, "Body"))
    if body is None:
        close_attachments(attachments)
        raise SoapFault(f"HTTP {status_code}: answer without SOAP Body", code="Receiver")
    fault = body.find(qn(SOAP12, "Fault"))
    action_el = env.find(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'Action')}")
    if fault is not None:
        code = fault.findtext(f"{qn(SOAP12, 'Code')}/{qn(SOAP12, 'Value')}") or "env:Receiver"
        sub = fault.findtext(f"{qn(SOAP12, 'Code')}/{qn(SOAP12, 'Subcode')}/{qn(SOAP12, 'Value')}")
        reason = fault.findtext(f"{qn(SOAP12, 'Reason')}/{qn(SOAP12, 'Text')}") or ""
        close_attachments(attachments)
        raise SoapFault(reason, code=code.split(":")[-1], subcode=sub)
    return SoapReply(status_code, env, action_el.text if action_el is not None else None,
                     attachments or {})


def read_reply(response: httpx.Response, max_reply: int = DEFAULT_MAX_REPLY,
               spool_dir: str | None = None) -> tuple[bytes, dict]:
    """Read a streamed answer: ``(envelope bytes, attachments)``, MTOM or plain."""
    ctype = response.headers.get("content-type", "")
    try:
        if ctype.split(";")[0].strip().lower() == "multipart/related":
            parser = MtomParser(ctype, limit=max_reply, spool_dir=spool_dir)
            try:
                for chunk in response.iter_bytes(READ_SIZE):
                    parser.feed(chunk)
                return parser.finish()
            except BaseException:
                parser.abort()
                raise
        data = bytearray()
        for chunk in response.iter_bytes(READ_SIZE):
            data += chunk
            if len(data) > max_reply:
                raise RequestTooLarge(len(data))
        return bytes(data), {}
    except RequestTooLarge:
        raise SoapFault(f"HTTP {response.status_code}: answer larger than {max_reply} bytes",
                        code="Receiver") from None
    except SoapFault as fault:  # an MTOM answer we cannot read is the responder's fault
        raise SoapFault(f"HTTP {response.status_code}: unreadable MTOM answer: {fault.reason}",
                        code="Receiver") from None


class SoapClient:
    """Posts SOAP 1.2 requests to one endpoint URL."""

    def __init__(self, url: str, timeout: float = 60.0, client: httpx.Client | None = None,
                 verify: bool | str = True, cert: tuple[str, str] | None = None,
                 max_reply: int = DEFAULT_MAX_REPLY, spool_dir: str | None = None) -> None:
        self.url = url
        self.http = client or httpx.Client(timeout=timeout, verify=verify, cert=cert)
        self.max_reply = max_reply
        self.spool_dir = spool_dir

    def call(self, action: str, body: etree._Element | bytes,
             headers: list[etree._Element] | None = None,
             attachments: list | None = None) -> SoapReply:
        """POST one request. With ``attachments`` (``OutgoingAttachment`` or
        ``(content_id, content_type, size, chunks)``; the body references them with
        :func:`soapstack.mtom.xop_include_element`) the request is MTOM, streamed with
        a precomputed Content-Length. The reply may be MTOM or plain either way."""
        data = build_envelope(action, self.url, body, headers)
        if attachments is None:
            content = data
            http_headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
        else:
            ctype, length, content = mtom_message(data, attachments, action=action)
            http_headers = {"Content-Type": ctype, "Content-Length": str(length)}
        with self.http.stream("POST", self.url, content=content, headers=http_headers) as response:
            root, reply_attachments = read_reply(response, self.max_reply, self.spool_dir)
        return parse_reply(response.status_code, root, reply_attachments)

    def close(self) -> None:
        self.http.close()
