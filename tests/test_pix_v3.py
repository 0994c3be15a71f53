"""PIX Manager over HL7 v3 (ITI TF-2b §3.44 ITI-44, §3.45 ITI-45, §3.46 ITI-46): the real
server (``opendmp serve``), real HTTP (soapstack's SoapClient / httpx), a real
``http.server`` PIX Consumer for ITI-46, on SQLite and PostgreSQL."""
from __future__ import annotations

import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import factory as F
import httpx
import pytest
from harness.postgres import free_port
from lxml import etree
from pixclient import LOCAL, LOCAL2, NIA, NIR, new_ins, new_local
from xds import ITI42, NS as XNS, error_codes, find_documents, registry, status

from opendmp.config import ROOT
from soapstack.client import SoapClient
from soapstack.envelope import SoapFault

V3 = "urn:hl7-org:v3"
NS = {"v3": V3}
SOURCE = "1.2.250.1.999.77.100"   # the feeding system's device OID
MCCI_XSD = ROOT / "schemas/ihe-iti/schema/HL7V3/NE2008/multicacheschemas"


def _reserve(port: int) -> socket.socket:
    """Bind the consumer's port without listening: connections to it are refused (the
    consumer is down) and no other test's server can take the port meanwhile."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s


@pytest.fixture(scope="module")
def pix(module_server_factory):
    mllp, consumer = free_port("127.0.0.1"), free_port("127.0.0.1")
    srv = module_server_factory(env={
        "OPENDMP_MLLP_PORT": str(mllp),   # the listener process runs the ITI-46 dispatcher
        "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO,HOSP2&{LOCAL2}&ISO@HIS2",
        "OPENDMP_PIX_CONSUMERS": f"v3c=http://127.0.0.1:{consumer}/pixconsumer#HOSP+{NIR}",
        "OPENDMP_PIX_MAX_BACKOFF_SECONDS": "1",
        "OPENDMP_PIX_DISPATCH_SECONDS": "0.2",
    })
    srv.consumer_port, srv.mllp_port = consumer, mllp
    srv.consumer_sock = _reserve(consumer)
    deadline = time.monotonic() + 30
    while True:  # the listener process (MLLP + the ITI-46 dispatcher) is up
        try:
            socket.create_connection(("127.0.0.1", mllp), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return srv


# ----------------------------------------------------------------------- messages

def _wrapper(interaction: str, body: str, sender: str = SOURCE, processing: str = "P") -> str:
    return f"""<{interaction} xmlns="{V3}" ITSVersion="XML_1.0">
 <id root="{uuid.uuid4()}"/><creationTime value="20260101120000"/>
 <interactionId root="2.16.840.1.113883.1.6" extension="{interaction}"/>
 <processingCode code="{processing}"/><processingModeCode code="T"/><acceptAckCode code="AL"/>
 <receiver typeCode="RCV"><device classCode="DEV" determinerCode="INSTANCE"><id root="1.2.250.1.999.1"/></device></receiver>
 <sender typeCode="SND"><device classCode="DEV" determinerCode="INSTANCE"><id root="{sender}"/></device></sender>
 {body}</{interaction}>"""


def _ii(root, ext):
    return f'<id root="{root}" extension="{ext}"/>'


def feed(kind: str, ids: list[tuple[str, str]], others: list[tuple[str, str]] = (), *,
         family="DUPONT", given="JEAN", sex="M", dob="19840512", prior=None, **kw) -> str:
    """ITI-44 add (201301), revise (201302) or merge (201304, ``prior`` subsumed)."""
    interaction = {"add": "PRPA_IN201301UV02", "revise": "PRPA_IN201302UV02",
                   "merge": "PRPA_IN201304UV02"}[kind]
    other = "".join(f'<asOtherIDs classCode="PAT">{_ii(r, e)}<scopingOrganization '
                    f'classCode="ORG" determinerCode="INSTANCE"><id root="{r}"/>'
                    f'</scopingOrganization></asOtherIDs>' for e, r in others)
    repl = ""
    if prior:
        repl = ('<replacementOf typeCode="RPLC"><priorRegistration classCode="REG" '
                'moodCode="EVN"><subject1 typeCode="SBJ"><priorRegisteredRole classCode="PAT">'
                f'{_ii(prior[1], prior[0])}</priorRegisteredRole></subject1></priorRegistration>'
                '</replacementOf>')
    body = f"""<controlActProcess classCode="CACT" moodCode="EVN">
 <subject typeCode="SUBJ"><registrationEvent classCode="REG" moodCode="EVN">
  <id nullFlavor="NA"/><statusCode code="active"/>
  <subject1 typeCode="SBJ"><patient classCode="PAT">
   {''.join(_ii(r, e) for e, r in ids)}<statusCode code="active"/>
   <patientPerson><name use="L"><given>{given}</given><family>{family}</family></name>
    <administrativeGenderCode code="{sex}"/><birthTime value="{dob}"/>{other}</patientPerson>
  </patient></subject1>
  <custodian typeCode="CST"><assignedEntity classCode="ASSIGNED"><id root="{SOURCE}"/></assignedEntity></custodian>
  {repl}
 </registrationEvent></subject></controlActProcess>"""
    return _wrapper(interaction, body, **kw)


def query(ident: tuple[str, str], domains: list[str] = (), **kw) -> str:
    ds = "".join(f'<dataSource><value root="{d}"/><semanticsText>DataSource.id</semanticsText>'
                 f'</dataSource>' for d in domains)
    body = f"""<controlActProcess classCode="CACT" moodCode="EVN">
 <code code="PRPA_TE201309UV02" codeSystem="2.16.840.1.113883.1.18"/>
 <queryByParameter><queryId root="1.2.250.1.999.2" extension="{uuid.uuid4().hex}"/>
  <statusCode code="new"/><responsePriorityCode code="I"/>
  <parameterList>{ds}<patientIdentifier><value root="{ident[1]}" extension="{ident[0]}"/>
   <semanticsText>Patient.Id</semanticsText></patientIdentifier></parameterList>
 </queryByParameter></controlActProcess>"""
    return _wrapper("PRPA_IN201309UV02", body, **kw)


def _send(srv, xml: str) -> etree._Element:
    root = etree.fromstring(xml.encode())
    action = "urn:hl7-org:v3:" + etree.QName(root).localname
    client = SoapClient(srv.url("/pix/v3"))
    try:
        reply = client.call(action, xml.encode())
    finally:
        client.close()
    expected = "PRPA_IN201310UV02" if action.endswith("309UV02") else "MCCI_IN000002UV01"
    assert reply.action == f"urn:hl7-org:v3:{expected}"
    assert etree.QName(reply.payload).localname == expected
    return reply.payload


def ack(p) -> str:
    return p.xpath("string(v3:acknowledgement/v3:typeCode/@code)", namespaces=NS)


def details(p) -> list[tuple[str, str, str]]:
    return [(d.xpath("string(v3:code/@code)", namespaces=NS),
             d.xpath("string(v3:text)", namespaces=NS),
             d.xpath("string(v3:location)", namespaces=NS))
            for d in p.xpath("v3:acknowledgement/v3:acknowledgementDetail", namespaces=NS)]


def qcode(p) -> str:
    return p.xpath("string(v3:controlActProcess/v3:queryAck/v3:queryResponseCode/@code)",
                   namespaces=NS)


def ids(p) -> set[tuple[str, str]]:
    return {(i.get("extension"), i.get("root")) for i in p.xpath(
        "v3:controlActProcess/v3:subject/v3:registrationEvent/v3:subject1/v3:patient/v3:id",
        namespaces=NS)}


_SCHEMAS: dict = {}


def assert_schema_valid(p) -> None:
    """The answer is valid against the vendored HL7v3 NE2008 schema of its interaction."""
    name = etree.QName(p).localname
    if name not in _SCHEMAS:
        _SCHEMAS[name] = etree.XMLSchema(etree.parse(str(MCCI_XSD / f"{name}.xsd")))
    schema = _SCHEMAS[name]
    assert schema.validate(etree.fromstring(etree.tostring(p))), schema.error_log


# ----------------------------------------------------------------------- configuration

def test_consumer_kinds_mllp_and_v3_url():
    from pix.config import PixConfig, PixConfigError

    cfg = PixConfig.from_settings({"OPENDMP_PIX_CONSUMERS":
                                   "a=h:2575/HOSP,b=mllp://h2:2576,"
                                   f"c=https://pix.example/consumer/v3#HOSP+{NIR}",
                                   "OPENDMP_HOME_COMMUNITY_ID": "urn:oid:1.2.250.1.999.9"})
    a, b, c = cfg.consumers
    assert (a.host, a.port, a.domains, a.url) == ("h", 2575, ("HOSP",), None)
    assert (b.host, b.port, b.url) == ("h2", 2576, None)
    assert (c.url, c.domains) == ("https://pix.example/consumer/v3", ("HOSP", NIR))
    assert cfg.device_oid == "1.2.250.1.999.9"
    with pytest.raises(PixConfigError):
        PixConfig.from_settings({"OPENDMP_PIX_DEVICE_OID": "not-an-oid"})


# ----------------------------------------------------------------------- parser (no I/O)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ID_VALUES = st.one_of(st.just(""), st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                                             max_size=20), st.sampled_from(
    [new_ins(), "123456789012345", "2A0000000000000"]))
_ROOTS = st.sampled_from(["", NIR, NIA, LOCAL, "1.2.3.999", "not an oid"])


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["add", "revise", "merge"]),
       ids=st.lists(st.tuples(_ID_VALUES, _ROOTS), max_size=3),
       others=st.lists(st.tuples(_ID_VALUES, _ROOTS), max_size=3),
       sex=st.sampled_from(["M", "F", "UN", ""]), dob=st.text("0123456789", max_size=10))
def test_iti44_parser_either_reads_a_request_or_refuses_with_a_located_PixError(
        kind, ids, others, sex, dob):
    """Whatever the identifiers, an ITI-44 message is read into a Feed/Merge or refused
    with a PixError whose location is an XPath into the message — never another error."""
    from xml.sax.saxutils import escape

    from pix.config import PixConfig
    from pix.hl7v3 import iti44
    from pix.hl7v3.message import header_of
    from pix.manager import PixManager
    from pix.model import PixError

    mgr = PixManager(PixConfig.from_settings({"OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO"}))
    q = lambda v: escape(v, {'"': "&quot;"})  # noqa: E731
    esc = [(q(e), r) for e, r in ids]
    xml = feed(kind, esc, [(q(e), r) for e, r in others], sex=sex, dob=dob,
               prior=esc[0] if kind == "merge" and esc else None)
    root = etree.fromstring(xml.encode())
    try:
        if kind == "merge":
            iti44.merges_from(mgr, root, header_of(root))
        else:
            f, locs = iti44.feed_from(mgr, root, header_of(root))
            assert f.identifiers and len(locs) == len(f.identifiers)
    except PixError as exc:
        assert str(exc.location[0]).startswith("/PRPA_IN20130"), exc.location


# ----------------------------------------------------------------------- ITI-44 / ITI-45

def test_iti44_add_links_local_id_to_ins_and_iti45_returns_it(pix):
    ins, ipp = new_ins(), new_local()
    a = _send(pix, feed("add", [(ipp, LOCAL)], [(ins, NIR)]))
    assert ack(a) == "AA", etree.tostring(a)
    assert_schema_valid(a)
    assert a.xpath("string(v3:receiver/v3:device/v3:id/@root)", namespaces=NS) == SOURCE
    q = _send(pix, query((ipp, LOCAL)))
    assert (ack(q), qcode(q)) == ("AA", "OK"), etree.tostring(q)
    assert ids(q) == {(ins, NIR)}
    assert_schema_valid(q)
    # requested domains: the queried domain itself is returned when asked for
    q = _send(pix, query((ins, NIR), [LOCAL, NIR]))
    assert ids(q) == {(ipp, LOCAL), (ins, NIR)}


def test_iti44_revise_and_iti45_case2_nf(pix):
    ipp = new_local()
    assert ack(_send(pix, feed("revise", [(ipp, LOCAL)]))) == "AA"
    q = _send(pix, query((ipp, LOCAL), [NIR]))
    assert (ack(q), qcode(q), ids(q)) == ("AA", "NF", set())
    assert not q.xpath("v3:controlActProcess/v3:subject", namespaces=NS)
    assert_schema_valid(q)


def test_iti44_wrong_ins_key_is_refused_AE_and_never_stored(pix):
    ins, ipp = new_ins(), new_local()
    bad = ins[:13] + f"{(int(ins[13:]) % 97) + 1:02d}"
    a = _send(pix, feed("add", [(ipp, LOCAL)], [(bad, NIR)]))
    assert ack(a) == "AE", etree.tostring(a)
    [(code, text, loc)] = details(a)
    assert code == "102" and "wrong key" in text
    assert loc.endswith("patientPerson/asOtherIDs/id[1]")
    assert_schema_valid(a)
    for ident in ((bad, NIR), (ipp, LOCAL)):
        q = _send(pix, query(ident))
        assert (ack(q), qcode(q)) == ("AE", "AE")   # nothing of the refused feed was stored
    # a malformed INS as patient/id as well
    a = _send(pix, feed("add", [("12345", NIR)]))
    assert ack(a) == "AE" and details(a)[0][0] == "102" and "15 characters" in details(a)[0][1]


def test_iti44_traits_contradicting_the_ins_are_refused(pix):
    ins = new_ins(sex="F", year=1970, month=2)
    a = _send(pix, feed("add", [(new_local(), LOCAL)], [(ins, NIR)], sex="M", dob="19700214"))
    assert ack(a) == "AE" and details(a)[0][0] == "205", etree.tostring(a)
    assert "sex" in details(a)[0][1]


def test_iti44_unknown_domain_and_unauthorized_source_are_AE_204(pix):
    a = _send(pix, feed("add", [(new_local(), "1.2.3.4.5.6.7")]))
    assert ack(a) == "AE" and details(a)[0][0] == "204"
    assert "not a domain" in details(a)[0][1]
    # HOSP2 only accepts identifiers created by source HIS2
    a = _send(pix, feed("add", [(new_local(), LOCAL2)]))
    assert ack(a) == "AE" and details(a)[0][0] == "204" and "may not assign" in details(a)[0][1]
    assert ack(_send(pix, feed("add", [(new_local(), LOCAL2)], sender="HIS2"))) == "AA"


def test_iti45_unknown_identifier_is_case3_AE(pix):
    q = _send(pix, query((new_local(), LOCAL)))
    assert (ack(q), qcode(q)) == ("AE", "AE")
    [(code, text, loc)] = details(q)
    assert code == "204" and loc.endswith("parameterList/patientIdentifier/value")
    assert_schema_valid(q)


def test_iti45_unknown_domain_is_case4_AE_with_one_detail_per_domain(pix):
    ipp = new_local()
    assert ack(_send(pix, feed("add", [(ipp, LOCAL)]))) == "AA"
    q = _send(pix, query((ipp, LOCAL), [NIR, "1.2.3.999.1", "1.2.3.999.2"]))
    assert (ack(q), qcode(q)) == ("AE", "AE"), etree.tostring(q)
    assert [(c, loc) for c, _, loc in details(q)] == [
        ("204", "/PRPA_IN201309UV02/controlActProcess/queryByParameter/parameterList/"
                "dataSource[2]/value"),
        ("204", "/PRPA_IN201309UV02/controlActProcess/queryByParameter/parameterList/"
                "dataSource[3]/value")]
    assert "1.2.3.999.1" in details(q)[0][1]
    # the queried identifier's own domain unknown: AE too, located at patientIdentifier
    q = _send(pix, query(("X1", "1.2.3.999.3")))
    assert (ack(q), qcode(q)) == ("AE", "AE")
    assert details(q)[0][2].endswith("patientIdentifier/value")
    assert_schema_valid(q)


# ----------------------------------------------------------------------- merge + registry

def _register(server, patient_cx):
    sub = F.submission(patient_cx)
    return registry(server).call(ITI42, F.submit_objects_request(sub)).payload


def test_iti44_ins_feed_opens_the_dmp_and_merge_moves_documents_to_the_survivor(pix):
    nia = new_ins(sex="F", year=1990, month=7, nia=True)
    nir = new_ins(sex="F", year=1990, month=7)
    ipp = new_local()
    nia_cx, nir_cx = f"{nia}^^^&{NIA}&ISO^NH", f"{nir}^^^&{NIR}&ISO^NH"
    assert error_codes(_register(pix, nia_cx)) == ["XDSUnknownPatientId"]
    t = dict(family="ROUX", given="LEA", sex="F", dob="19900704")
    assert ack(_send(pix, feed("add", [(ipp, LOCAL)], [(nia, NIA)], **t))) == "AA"
    answer = _register(pix, nia_cx)
    assert status(answer) == "Success", etree.tostring(answer)
    # NIA replaced by the NIR: PRPA_IN201304UV02, patient/id NIR, priorRegisteredRole NIA
    m = _send(pix, feed("merge", [(nir, NIR)], prior=(nia, NIA), **t))
    assert ack(m) == "AA", etree.tostring(m)
    docs = find_documents(pix, nir_cx).xpath("//rim:ExtrinsicObject", namespaces=XNS)
    assert len(docs) == 1
    assert status(_register(pix, nir_cx)) == "Success"
    refused = _register(pix, nia_cx)
    assert error_codes(refused) == ["XDSUnknownPatientId"]
    # ITI-45: the subsumed identifier is no longer a key; the local id now links to the NIR
    q = _send(pix, query((nia, NIA)))
    assert (ack(q), qcode(q)) == ("AE", "AE")
    assert ids(_send(pix, query((ipp, LOCAL)))) == {(nir, NIR)}


def test_iti44_merge_of_unknown_patient_is_refused(pix):
    m = _send(pix, feed("merge", [(new_local(), LOCAL)], prior=(new_local(), LOCAL)))
    assert ack(m) == "AE" and details(m)[0][0] == "204"
    assert "priorRegisteredRole/id" in details(m)[0][2]


# ----------------------------------------------------------------------- bad input

def test_malformed_xml_and_wrong_body_are_soap_faults(pix):
    env = ('<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" '
           'xmlns:wsa="http://www.w3.org/2005/08/addressing"><env:Header>'
           '<wsa:Action>urn:hl7-org:v3:PRPA_IN201301UV02</wsa:Action></env:Header>'
           '<env:Body>{}</env:Body></env:Envelope>')
    ctype = 'application/soap+xml; charset=UTF-8; action="urn:hl7-org:v3:PRPA_IN201301UV02"'
    r = httpx.post(pix.url("/pix/v3"), content=env.format("<PRPA_IN201301UV02 xmlns=").encode(),
                   headers={"Content-Type": ctype})
    assert r.status_code == 400 and b"Fault" in r.content and b"malformed XML" in r.content
    r = httpx.post(pix.url("/pix/v3"),
                   content=env.format(f'<PRPA_IN201309UV02 xmlns="{V3}"/>').encode(),
                   headers={"Content-Type": ctype})
    assert r.status_code == 400 and b"expects a PRPA_IN201301UV02 body" in r.content


def test_wrong_interaction_id_and_processing_code_are_AR(pix):
    xml = feed("add", [(new_local(), LOCAL)], processing="X")
    a = _send(pix, xml)
    assert ack(a) == "AR" and details(a)[0][0] == "202"
    xml = feed("add", [(new_local(), LOCAL)]).replace(
        'extension="PRPA_IN201301UV02"', 'extension="PRPA_IN201302UV02"')
    assert ack(_send(pix, xml)) == "AR"


def test_wsdl_is_served_with_our_address(pix):
    r = httpx.get(pix.url("/pix/v3") + "?wsdl")
    assert r.status_code == 200
    doc = etree.fromstring(r.content)
    loc = doc.xpath("//s12:address/@location",
                    namespaces={"s12": "http://schemas.xmlsoap.org/wsdl/soap12/"})
    assert loc == [pix.url("/pix/v3")]
    # its schema imports resolve on our own server
    inc = doc.xpath("//xsd:include/@schemaLocation",
                    namespaces={"xsd": "http://www.w3.org/2001/XMLSchema"})[0]
    assert httpx.get(str(httpx.URL(pix.url("/pix/v3")).join(inc))).status_code == 200


# ----------------------------------------------------------------------- ITI-46

class _Consumer:
    """A PIX Consumer for ITI-46: a real http.server answering MCCI_IN000002UV01 AA."""

    def __init__(self, srv) -> None:
        self.srv = srv
        received = self.received = []

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.headers.get("Content-Type", ""), body))
                answer = (f'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" '
                          f'xmlns:wsa="http://www.w3.org/2005/08/addressing"><env:Header>'
                          f'<wsa:Action>urn:hl7-org:v3:MCCI_IN000002UV01</wsa:Action>'
                          f'</env:Header><env:Body><MCCI_IN000002UV01 xmlns="{V3}">'
                          f'<acknowledgement><typeCode code="AA"/></acknowledgement>'
                          f'</MCCI_IN000002UV01></env:Body></env:Envelope>').encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/soap+xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", srv.consumer_port), H,
                                         bind_and_activate=False)
        self.httpd.socket.close()
        self.httpd.socket = srv.consumer_sock  # the reserved port, now listening
        self.httpd.server_activate()

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.srv.consumer_sock = _reserve(self.srv.consumer_port)  # down again

    def notifications(self) -> list[etree._Element]:
        out = []
        for ctype, body in self.received:
            env = etree.fromstring(body)
            out.append(env.xpath("//v3:PRPA_IN201302UV02", namespaces=NS)[0])
            assert "application/soap+xml" in ctype
            assert env.xpath("string(//wsa:Action)", namespaces={
                "wsa": "http://www.w3.org/2005/08/addressing"}) == \
                "urn:hl7-org:v3:PRPA_IN201302UV02"
        return out


def _wait_for(pred, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _patient_ids(n) -> set[tuple[str, str]]:
    return {(i.get("extension"), i.get("root")) for i in n.xpath(
        "v3:controlActProcess/v3:subject/v3:registrationEvent/v3:subject1/v3:patient/v3:id",
        namespaces=NS)}


def test_iti46_consumer_down_gets_notifications_later_in_order(pix):
    ipps = [new_local() for _ in range(3)]
    ins = new_ins()
    # the consumer is down: the feeds are accepted all the same
    assert ack(_send(pix, feed("add", [(ipps[0], LOCAL)]))) == "AA"
    assert ack(_send(pix, feed("add", [(ipps[1], LOCAL)]))) == "AA"
    assert ack(_send(pix, feed("add", [(ipps[2], LOCAL)], [(ins, NIR)]))) == "AA"
    time.sleep(1.5)  # at least one failed attempt
    with _Consumer(pix) as consumer:
        def mine():
            return [n for n in consumer.notifications()
                    if any(e == ipp for e, _ in _patient_ids(n) for ipp in ipps)]
        _wait_for(lambda: len(mine()) >= 3)
        got = mine()
        assert [_patient_ids(n) for n in got[:3]] == [
            {(ipps[0], LOCAL)}, {(ipps[1], LOCAL)}, {(ipps[2], LOCAL), (ins, NIR)}]
        assert_schema_valid(got[0])
        assert got[0].xpath("string(v3:controlActProcess/v3:subject/v3:registrationEvent/"
                            "v3:subject1/v3:patient/v3:patientPerson/v3:name/@nullFlavor)",
                            namespaces=NS) == "NA"
        # a merge is notified too, with the consumer's domains only
        old = new_local()
        assert ack(_send(pix, feed("add", [(old, LOCAL)]))) == "AA"
        assert ack(_send(pix, feed("merge", [(ipps[2], LOCAL)], prior=(old, LOCAL)))) == "AA"
        _wait_for(lambda: len(mine()) >= 4)
        assert _patient_ids(mine()[-1]) == {(ipps[2], LOCAL), (ins, NIR)}


def test_iti8_feed_over_mllp_is_notified_to_the_v3_consumer_too(pix):
    from pixclient import adt, cx, send1

    ipp, ins = new_local(), new_ins()
    with _Consumer(pix) as consumer:
        a = send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(ins, NIR)}"))
        assert a.msa == "AA", a
        _wait_for(lambda: any((ipp, LOCAL) in _patient_ids(n)
                              for n in consumer.notifications()))
        [n] = [n for n in consumer.notifications() if (ipp, LOCAL) in _patient_ids(n)]
        assert _patient_ids(n) == {(ipp, LOCAL), (ins, NIR)}


def test_iti46_send_soap_reads_the_consumer_answer():
    """AA/AE settle or reject the row; a Sender fault rejects it; an unreachable consumer
    or an HTTP error is an OSError (retried by the dispatcher)."""
    from pix.config import Consumer
    from pix.outbox import send_soap

    answers = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/soap+xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    env = ('<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body>{}'
           '</env:Body></env:Envelope>')
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        c = Consumer("x", "127.0.0.1", 0, (), f"http://127.0.0.1:{httpd.server_port}/c")
        for code in ("AA", "AE"):
            answers.append((200, env.format(f'<MCCI_IN000002UV01 xmlns="{V3}"><acknowledgement>'
                                            f'<typeCode code="{code}"/></acknowledgement>'
                                            '</MCCI_IN000002UV01>').encode()))
            assert send_soap(c, b"<x/>") == code
        answers.append((400, env.format(
            '<env:Fault><env:Code><env:Value>env:Sender</env:Value></env:Code><env:Reason>'
            '<env:Text xml:lang="en">no</env:Text></env:Reason></env:Fault>').encode()))
        assert send_soap(c, b"<x/>") == "FAULT"
        answers.append((503, b"<html>busy</html>"))
        with pytest.raises(OSError):
            send_soap(c, b"<x/>")
    finally:
        httpd.shutdown()
        httpd.server_close()
    with pytest.raises(OSError):
        send_soap(Consumer("y", "127.0.0.1", 0, (), f"http://127.0.0.1:{free_port('127.0.0.1')}/"),
                  b"<x/>", timeout=2)


# ----------------------------------------------------------------------- corpus replay
#
# cases.tsv rows of ITI-44/45/46 (and the raw HTTP traces of HL7v3 PIX in ahdis-epr):
# every request is POSTed to /pix/v3 (its own SOAP envelope when it has one) on a server
# configured with every assigning authority the requests use (bare OIDs in
# OPENDMP_PIX_DOMAINS), except the one MESA 10503-01 uses on purpose as unknown. The
# expectation of a request is the outcome observed in its paired response row
# (``observed: ack CA|AA [queryResponseCode OK]``); requests without one get the
# outcome ITI TF-2b prescribes for them (listed in _SPEC_EXPECTED with the reason).
# The IHE samples come in dated variants that replay one scenario (add, add, revise,
# merge, query) with the same identifiers: each variant runs on its own identifiers
# (extension suffixed with the variant) so one variant's merge does not pre-empt the
# next's.

import csv
import json
import os
import re

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
_UNKNOWN_ON_PURPOSE = {"1.3.6.1.4.1.21367.2005.3.3333"}   # MESA 10503-01 UnknownAssigningAuth
_ID_PATHS = (".//v3:patient/v3:id", ".//v3:asOtherIDs/v3:id", ".//v3:priorRegisteredRole/v3:id",
             ".//v3:patientIdentifier/v3:value", ".//v3:dataSource/v3:value")
#: response row -> the request row it answers (same source, same variant)
_PAIRS = {
    r"ihe-iti:PIXV3/02_PatientRegistryRecordAdded1Ack(.*)": r"ihe-iti:PIXV3/01_PatientRegistryRecordAdded1\1",
    r"ihe-iti:PIXV3/07_PIXQuery1Response(.*)": r"ihe-iti:PIXV3/06_PIXQuery1\1",
    r"EPR-by-example:samples/ITI-44_response_raw.xml": "EPR-by-example:samples/ITI-44_request_raw.xml",
    r"EPR-by-example:samples/ITI-45_response_raw.xml": "EPR-by-example:samples/ITI-45_request_raw.xml",
}
#: requests whose source asserts no outcome: what ITI TF-2b makes of them here, and why
_SPEC_EXPECTED = {
    "ipf:hl7v3/pixquery/NistPixpdq_Mesa10502-03~UnknownId_Example_01.xml":
        ("AE AE", "§3.45.4.2.3 case 3: unknown patient identifier"),
    "ipf:hl7v3/pixquery/NistPixpdq_Mesa10503-01~UnknownAssigningAuth_Example_01.xml":
        ("AE AE", "§3.45.4.2.3 case 4: unknown assigning authority"),
    "ipf:hl7v3/pixquery/NistPixpdq_Mesa10501-04_Example_01.xml":
        ("AE AE", "case 3: the MESA patient it asks for is fed over HL7v2 in MESA 10501, "
                  "not by any v3 message of the corpus"),
    "ipf:hl7v3/pixquery/NistPixpdq_Mesa10501-05_Example_01.xml":
        ("AE AE", "case 3: as 10501-04"),
    "ipf:hl7v3/validation/prpa-invalid.xml":
        ("rejected", "IPF schema-validation case: must be rejected (no patient)"),
    "epr-integration-cara:iti-45-gassmann-int.http":
        ("AE AE", "case 3: patient P001 is not fed by the corpus (the ITI-44 trace feeds P003)"),
    "ipf:hl7v3/pixsource/A40_Response.xml":
        ("AE", "merge of a subsumed id (704686) no corpus message feeds: refused 204, as ITI-8"),
    "ipf:hl7v3/pixfeed/PIX_FEED_MERGE_Maximal_Request.xml":
        ("AE", "subsumed id of domain 1.2.3.4.666 with no surviving id of that domain (and "
               "unknown): refused, merges stay within a domain (ITI TF-2b §3.44.4.1.2)"),
    "ipf:hl7v3/pixfeed/PIX_FEED_REG_Maximal_Request.xml":
        ("AE", "a patient/id without root (assigningAuthorityName only): HL7 V3 II needs a "
               "root unless nullFlavor; refused 101 rather than guessed"),
    "ipf:hl7v3/pixfeed/PIX_FEED_REV_Maximal_Request.xml":
        ("AE", "as PIX_FEED_REG_Maximal_Request"),
    "ipf:hl7v3/validation/iti44-multipatient-request-1.xml":
        ("AE", "two subjects in one message: ITI-44 carries one patient (§3.44.4.1.2)"),
}
#: expectations we knowingly cannot meet, with the reason (the test fails if one passes)
_DEVIATIONS = {
    **{f"ihe-iti:PIXV3/{n}{v}.xml":
       "the sample's scenario links a second record of domain ...99998.8734 (34827G409) to "
       "the other-domain id 38273N237 already linked to 34827G234, before the merge (05) "
       "says they are one patient; our linking policy keeps one identifier per domain in "
       "a patient (README, identity vigilance) and refuses it AE 205 'send a merge' — the "
       "merge then succeeds and the query (06) answers OK as the paired response shows"
       for n in ("03_PatientRegistryRecordAdded2", "04_PatientRegistryRecordRevised2")
       for v in ("", "_20110228", "_20110328")},
    "EPR-by-example:samples/ITI-45_request_raw.xml":
        "the response trace answers OK for patient 900010, fed on the EPR test platform "
        "(not in the corpus): here it is unknown, AE (ITI TF-2b §3.45.4.2.3 case 3)",
}


def _rows() -> list[dict]:
    with open(CORPUS / "cases.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r for r in rows if re.match(r"ITI-4[456]\b", r["transaction"])
            or "urn:hl7-org:v3:PRPA_IN" in r["transaction"]]


def _payloads(path: Path) -> list[tuple[str, bytes]]:
    """(action, interaction bytes) of each HL7v3 request in a file (an interaction, a
    SOAP envelope, or a raw HTTP trace with one or more requests)."""
    raw = path.read_bytes()
    if path.suffix == ".http":
        out = []
        for block in re.split(rb"\n###[^\n]*\n", b"\n" + raw):
            m = re.search(rb"<(?:\w+:)?Envelope.*?</(?:\w+:)?Envelope>", block, re.S)
            if m and b"urn:hl7-org:v3:PRPA_IN" in m.group(0):
                out.extend(_payloads_of(m.group(0)))
        return out
    return _payloads_of(raw)


def _payloads_of(raw: bytes) -> list[tuple[str, bytes]]:
    root = etree.fromstring(raw.strip())
    if etree.QName(root).localname == "Envelope":
        body = root.find("{http://www.w3.org/2003/05/soap-envelope}Body")
        root = next(c for c in body if isinstance(c.tag, str))
    return [("urn:hl7-org:v3:" + etree.QName(root).localname, etree.tostring(root))]


def _variant(case_id: str) -> str:
    if case_id.startswith("ihe-iti:PIXV3/"):
        m = re.search(r"_(\d{8})\.xml$", case_id)
        return "ihe-" + (m.group(1) if m else "orig")
    return case_id.split(":")[0]


def _rewrite(payload: bytes, variant: str) -> bytes:
    if not variant.startswith("ihe-"):
        return payload
    root = etree.fromstring(payload)
    for path in _ID_PATHS:
        for el in root.xpath(path, namespaces=NS):
            if el.get("extension"):
                el.set("extension", f"{el.get('extension')}.{variant}")
    return etree.tostring(root)


def _observed(outcome: str) -> str | None:
    m = re.match(r"observed: ack (\w+)(?: queryResponseCode (\w+))?", outcome)
    if not m:
        return None
    return " ".join(x for x in m.groups() if x)


def _corpus_plan():
    rows = _rows()
    by_id = {r["case_id"]: r for r in rows}
    expected, responses = {}, {}
    for r in rows:
        for pat, req in _PAIRS.items():
            if re.fullmatch(pat, r["case_id"]):
                target = re.sub(pat, req, r["case_id"])
                if target in by_id:
                    expected[target] = _observed(r["expected_outcome"])
                    responses[r["case_id"]] = target
    requests = [r for r in rows if r["case_id"] not in responses and r["role"] != "response"]
    unpaired_responses = [r["case_id"] for r in rows
                          if r["role"] == "response" and r["case_id"] not in responses]
    return requests, expected, unpaired_responses


def _domains(requests) -> list[str]:
    found = set()
    for r in requests:
        path = CORPUS / r["files"]
        try:
            payloads = _payloads(path)
        except (etree.XMLSyntaxError, StopIteration, OSError):
            continue
        for _, p in payloads:
            root = etree.fromstring(p)
            for xp in _ID_PATHS:
                found.update(el.get("root") for el in root.xpath(xp, namespaces=NS)
                             if el.get("root"))
    return sorted(found - _UNKNOWN_ON_PURPOSE)


def _outcome(srv, action: str, payload: bytes) -> str:
    client = SoapClient(srv.url("/pix/v3"))
    try:
        reply = client.call(action, payload)
    except SoapFault as fault:
        return f"fault {fault.code}"
    finally:
        client.close()
    p = reply.payload
    code = ack(p)
    why = "; ".join(t for _, t, _ in details(p))
    if etree.QName(p).localname == "PRPA_IN201310UV02":
        code = f"{code} {qcode(p)}"
    return f"{code} ({why})" if why else code


def _matches(got: str, want: str) -> bool:
    got = got.split(" (")[0]
    if want == "rejected":
        return got.split()[0] in ("AE", "AR", "fault")
    # CA (commit accept, HL7v3 accept-level ack) is what the samples written before the
    # 2011 ITI-44/45 revisions show where ITI TF-2b now requires AA: the same outcome.
    norm = lambda s: " ".join("AA" if w == "CA" else w for w in s.split())  # noqa: E731
    return norm(got) == norm(want)


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus not present")
def test_corpus_pix_v3_replay(server_factory):
    requests, expected, unpaired = _corpus_plan()
    srv = server_factory(env={"OPENDMP_PIX_DOMAINS": ",".join(_domains(requests))})
    requests.sort(key=lambda r: (_variant(r["case_id"]), r["case_id"]))
    results: dict[str, str] = {}
    for r in requests:
        cid = r["case_id"]
        try:
            payloads = _payloads(CORPUS / r["files"])
        except (etree.XMLSyntaxError, StopIteration) as exc:
            results[cid] = f"skip: not readable as HL7v3 ({exc})"
            continue
        if not payloads:
            results[cid] = "skip: no HL7v3 request in the file"
            continue
        want = expected.get(cid) or _SPEC_EXPECTED.get(cid, ("AA", ""))[0]
        if payloads[0][0].endswith("PRPA_IN201309UV02") and want == "AA":
            want = "AA OK"
        got = [_outcome(srv, a, _rewrite(p, _variant(cid))) for a, p in payloads]
        ok = all(_matches(g, want) for g in got)
        results[cid] = "pass" if ok else f"fail: got {got}, expected {want}"
    passed = sorted(c for c, v in results.items() if v == "pass")
    failed = {c: v for c, v in results.items() if v.startswith("fail")}
    skipped = {c: v for c, v in results.items() if v.startswith("skip")}
    basis = {c: ("source" if c in expected else "spec" if c in _SPEC_EXPECTED else "accept")
             for c in passed}
    report = {"requests": len(requests), "pass": len(passed),
              "pass_on_source_outcome": sum(v == "source" for v in basis.values()),
              "pass_on_spec_expectation": sum(v == "spec" for v in basis.values()),
              "pass_accepted_sample": sum(v == "accept" for v in basis.values()),
              "fail": failed,
              "skip": skipped, "responses_used_as_expectation": len(expected),
              "responses_without_request": unpaired}
    print("\n[pix v3 corpus]", json.dumps(report, indent=1))
    out = os.environ.get("OPENDMP_TEST_PIX_V3_CORPUS_REPORT")
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    unexpected = {c: v for c, v in failed.items() if c not in _DEVIATIONS}
    assert not unexpected, unexpected
    now_passing = [c for c in _DEVIATIONS if results.get(c) == "pass"]
    assert not now_passing, f"listed as deviations but pass now: {now_passing}"
