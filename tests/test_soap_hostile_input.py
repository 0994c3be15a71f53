"""SOAP 1.2 layer on the real server: every bad input gets a standard fault, nothing stored.

SOAP 1.2 Part 1 §5 (no DTD), §5.2.3 (mustUnderstand), §5.4 (faults); WS-Addressing 1.0
SOAP binding §6 (ActionNotSupported, MessageAddressingHeaderRequired).
"""
from __future__ import annotations

import factory as F
import httpx
from xds import ITI42, envelope, fault, find_documents, raw_post, status

from lxml import etree

from registry.hl7types import parse_cx


def _registered_patient(cli) -> str:
    patient = F.new_ins()
    assert cli("patient", "add", patient).returncode == 0
    return patient


def test_malformed_xml_is_a_sender_fault(server):
    r = raw_post(server, b"<soap:Envelope><not-closed>")
    assert r.status_code == 400
    code, _, reason = fault(r)
    assert code == "env:Sender" and "malformed XML" in reason


def test_xxe_is_refused_and_no_file_is_read(server):
    body = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            + envelope("<x>&x;</x>"))
    r = raw_post(server, body)
    assert r.status_code == 400
    assert "root:" not in r.text
    assert "DTD" in fault(r)[2]


def test_entity_expansion_bomb_is_refused(server):
    lol = "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    body = f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY l0 "lol">{lol}]><e>&l9;</e>'.encode()
    r = raw_post(server, body)
    assert r.status_code == 400
    assert fault(r)[0] == "env:Sender"


def test_soap11_envelope_gets_version_mismatch(server):
    body = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/>'
            b"</s:Envelope>")
    r = raw_post(server, body, content_type="text/xml")
    assert fault(r)[0] == "env:VersionMismatch"


def test_missing_ws_addressing_action(server):
    r = raw_post(server, envelope("<x/>", action=None))
    code, sub, _ = fault(r)
    assert code == "env:Sender"
    assert sub.endswith("MessageAddressingHeaderRequired")


def test_unknown_action_is_action_not_supported(server):
    r = raw_post(server, envelope("<x/>", action="urn:example:NoSuchAction"))
    code, sub, reason = fault(r)
    assert sub.endswith(":ActionNotSupported")
    assert "urn:example:NoSuchAction" in reason


def test_body_not_matching_action_is_refused(server):
    r = raw_post(server, envelope('<q:AdhocQueryRequest xmlns:q="urn:oasis:names:tc:ebxml-regrep'
                                  ':xsd:query:3.0"/>', action=ITI42))
    assert r.status_code == 400
    assert "SubmitObjectsRequest" in fault(r)[2]


def test_must_understand_header_not_processed(server):
    hdr = ('<x:Secret xmlns:x="urn:example" soap:mustUnderstand="true">1</x:Secret>')
    r = raw_post(server, envelope("<x/>", extra_header=hdr))
    assert r.status_code == 500
    code, _, reason = fault(r)
    assert code == "env:MustUnderstand" and "Secret" in reason
    assert b"NotUnderstood" in r.content


def test_response_carries_ws_addressing(server, cli):
    patient = _registered_patient(cli)
    req = F.submit_objects_request(F.submission(patient))
    body = envelope(etree.tostring(req).decode())
    r = raw_post(server, body)
    assert r.status_code == 200
    assert 'action="urn:ihe:iti:2007:RegisterDocumentSet-bResponse"' in r.headers["content-type"]
    env = etree.fromstring(r.content)
    ns = {"wsa": "http://www.w3.org/2005/08/addressing"}
    assert env.findtext(".//wsa:Action", namespaces=ns) == \
        "urn:ihe:iti:2007:RegisterDocumentSet-bResponse"
    sent_id = etree.fromstring(body).findtext(".//wsa:MessageID", namespaces=ns)
    assert env.findtext(".//wsa:RelatesTo", namespaces=ns) == sent_id
    assert env.findtext(".//wsa:MessageID", namespaces=ns).startswith("urn:uuid:")


def test_oversized_body_is_refused_and_nothing_stored(server_factory):
    srv = server_factory(env={"OPENDMP_MAX_REQUEST_BYTES": "20000"})
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    sub = F.submission(patient, n_docs=12)
    body = envelope(etree.tostring(F.submit_objects_request(sub)).decode())
    assert len(body) > 20000
    r = raw_post(srv, body)
    assert r.status_code == 400
    assert "exceeds the limit" in fault(r)[2]
    assert not find_documents(srv, parse_cx(patient).canonical).xpath("//*[local-name()='ExtrinsicObject']")


def test_plain_get_on_soap_endpoint_is_405(server):
    assert httpx.get(server.url("/xds/registry")).status_code == 405
