"""A small SOAP 1.2 + WS-Addressing client (sources, consumers, repository -> registry).

ITI TF-2x Appendix V: every request carries wsa:Action, wsa:MessageID, wsa:ReplyTo
(anonymous) and wsa:To. The answer is parsed with the same hostile-input-safe parser
as requests; SOAP faults become :class:`SoapFault` exceptions.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
from lxml import etree

from .envelope import ANONYMOUS, SoapFault
from .namespaces import SOAP12, WSA, qn
from .xml import XmlRejected, parse_xml


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

    @property
    def payload(self) -> etree._Element:
        body = self.envelope.find(qn(SOAP12, "Body"))
        return next(c for c in body if isinstance(c.tag, str))


def parse_reply(status_code: int, content: bytes) -> SoapReply:
    """Parse a SOAP 1.2 answer; raise SoapFault for env:Fault."""
    try:
        env = parse_xml(content)
    except XmlRejected as exc:
        raise SoapFault(f"HTTP {status_code}: unreadable answer: {exc}", code="Receiver") from None
    body = env.find(qn(SOAP12, "Body"))
    if body is None:
        raise SoapFault(f"HTTP {status_code}: answer without SOAP Body", code="Receiver")
    fault = body.find(qn(SOAP12, "Fault"))
    action_el = env.find(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'Action')}")
    if fault is not None:
        code = fault.findtext(f"{qn(SOAP12, 'Code')}/{qn(SOAP12, 'Value')}") or "env:Receiver"
        sub = fault.findtext(f"{qn(SOAP12, 'Code')}/{qn(SOAP12, 'Subcode')}/{qn(SOAP12, 'Value')}")
        reason = fault.findtext(f"{qn(SOAP12, 'Reason')}/{qn(SOAP12, 'Text')}") or ""
        raise SoapFault(reason, code=code.split(":")[-1], subcode=sub)
    return SoapReply(status_code, env, action_el.text if action_el is not None else None)


class SoapClient:
    """Posts SOAP 1.2 requests to one endpoint URL."""

    def __init__(self, url: str, timeout: float = 60.0, client: httpx.Client | None = None,
                 verify: bool | str = True, cert: tuple[str, str] | None = None) -> None:
        self.url = url
        self.http = client or httpx.Client(timeout=timeout, verify=verify, cert=cert)

    def call(self, action: str, body: etree._Element | bytes,
             headers: list[etree._Element] | None = None) -> SoapReply:
        data = build_envelope(action, self.url, body, headers)
        response = self.http.post(
            self.url, content=data,
            headers={"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'},
        )
        return parse_reply(response.status_code, response.content)

    def close(self) -> None:
        self.http.close()
