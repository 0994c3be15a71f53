"""The patient's access history (CSP art. L. 1111-19) through the real server, who may
read the audit trail (opendmp.policy.may_read), and refused TLS handshakes audited on every TLS
listener (ITI-19 node-authentication failure) with ``openssl s_client``."""
from __future__ import annotations

import json
import ssl
import subprocess
import time
from urllib.parse import quote

import factory as F
import httpx
import pytest
from harness.postgres import free_port
from pixclient import LOCAL, adt, cx, new_local
from test_atna_server import wait_for, wait_listening
from xds import FIND_DOCUMENTS, ITI18, adhoc_query, repository_unique_id

from atna import pki
from repository.source import DocumentContent, provide_and_register_request, retrieve_request
from soapstack.client import SoapClient
from soapstack.envelope import SoapFault
from xua.idp import VihfClaims, issue, security_header

ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"


def _assertion(srv, patient: str, mode: str, name: str):
    ins, _, _, authority = patient.split("^")[:4]
    return security_header(issue(srv.home, VihfClaims(ins=ins, ins_oid=authority.split("&")[1],
                                                      mode=mode, name=name)))


def _history(srv, patient: str, client=None) -> dict:
    get = (client or httpx).get
    r = get(srv.url(f"/audit/patients/{quote(patient, safe='')}/access-history"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _summary(h: dict) -> list[tuple]:
    return [(a["access"], a["transaction"], a["result"], a["accessMode"], a["who"]["name"])
            for a in h["accesses"]]


def test_access_history_shows_exactly_the_accesses_that_happened_including_a_refused_one(server):
    patient, other = F.new_ins(), F.new_ins()
    for p in (patient, other):
        assert server.run_cli(["patient", "add", p]).returncode == 0
    # 1. a submission (ITI-41), normal access
    sub = F.submission(patient)
    de = sub.documents[0]
    de.hash = de.size = de.repository_unique_id = None
    body, _ = provide_and_register_request(sub, {de.id: DocumentContent.of(b"<doc>h</doc>", "text/xml")},
                                           mtom=False)
    reply = SoapClient(server.url("/xds/repository")).call(
        ITI41, body, headers=[_assertion(server, patient, "normal", "DOCTEUR Alice")])
    assert reply.payload.get("status").endswith(":Success")
    # 2. a consultation (ITI-18) in emergency (bris de glace)
    query = adhoc_query(FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": f"'{patient}'",
        "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"})
    reply = SoapClient(server.url("/xds/registry")).call(
        ITI18, query, headers=[_assertion(server, patient, "bris_de_glace", "DOCTEUR Bob")])
    assert reply.payload.get("status").endswith(":Success")
    # 3. a retrieval (ITI-43) by the medical regulation (centre 15)
    reply = SoapClient(server.url("/xds/repository")).call(
        ITI43, retrieve_request(repository_unique_id(server), [de.unique_id]),
        headers=[_assertion(server, patient, "centre_15", "DOCTEUR Carol")])
    response = reply.payload.find("{urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0}RegistryResponse")
    assert response.get("status").endswith(":Success") and reply.attachments
    # 4. refused: an assertion for another patient asking for this one's documents
    with pytest.raises(SoapFault):
        SoapClient(server.url("/xds/registry")).call(
            ITI18, query, headers=[_assertion(server, other, "normal", "DOCTEUR Eve")])

    h = wait_for(lambda: (lambda h: h if h["count"] >= 4 else None)(_history(server, patient)),
                 what="four accesses")
    time.sleep(1.5)  # anything else would have arrived by now (same spool, same sender)
    h = _history(server, patient)
    assert _summary(h) == [
        ("refused", "ITI-18", "refused", None, None),
        ("retrieval", "ITI-43", "granted", "centre_15", "DOCTEUR Carol"),
        ("consultation", "ITI-18", "granted", "bris_de_glace", "DOCTEUR Bob"),
        ("submission", "ITI-41", "granted", "normal", "DOCTEUR Alice"),
    ], json.dumps(h, indent=1)
    retrieval, submission = h["accesses"][1], h["accesses"][3]
    assert retrieval["documents"] == [de.unique_id]
    assert submission["submissionSet"] == sub.submission_set.unique_id
    assert submission["who"]["user"] == "810001234567"  # the IdNatPs of the assertion
    assert h["accesses"][0]["who"]["node"] == "127.0.0.1"
    assert "assertion" in h["accesses"][0]["description"]
    # the other patient, whose assertion was used, sees the refused attempt too
    assert _summary(_history(server, other)) == [("refused", "ITI-18", "refused", None, None)]
    # the command line says the same
    out = server.run_cli(["audit", "history", patient, "--json"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accesses"] == h["accesses"]


# ----------------------------------------------------------------------- readers, TLS
@pytest.fixture(scope="module")
def tls_server(module_server_factory):
    mllp = free_port("127.0.0.1")
    srv = module_server_factory(env={"OPENDMP_HTTP_TLS": "1", "OPENDMP_AUDIT_READERS": "auditor",
                                     "OPENDMP_AUDIT_HISTORY_READERS": "portal",
                                     "OPENDMP_HEALTH_DATA_READERS": "portal",
                                     "OPENDMP_MLLP_PORT": str(mllp),
                                     "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO"},
                                start=False)
    # the MLLP listener under mutual TLS with the node's (development) PKI
    cert, key, ca = srv.client_cert("pix-node")
    srv.extra_env.update({"OPENDMP_MLLP_TLS_CERT": cert, "OPENDMP_MLLP_TLS_KEY": key,
                          "OPENDMP_MLLP_TLS_CA": ca})
    srv.start()
    srv.mllp_port = mllp
    wait_listening(mllp)
    return srv


def _as(srv, name: str) -> httpx.Client:
    cert, key, ca = srv.client_cert(name)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return httpx.Client(verify=ctx, timeout=30)


def test_audit_trail_readable_only_by_configured_readers_refusals_403_and_audited(tls_server):
    srv = tls_server
    with _as(srv, "harness") as nobody, _as(srv, "auditor") as auditor, \
            _as(srv, "portal") as portal:
        r = nobody.get(srv.url("/audit"))
        assert r.status_code == 403 and "not an audit reader" in r.json()["error"]
        r = nobody.get(srv.url("/fhir/AuditEvent"))
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        assert r.json()["issue"][0]["code"] == "forbidden"
        history = f"/audit/patients/{quote(F.new_ins(), safe='')}/access-history"
        assert nobody.get(srv.url(history)).status_code == 403
        assert portal.get(srv.url(history)).status_code == 200
        assert portal.get(srv.url("/audit")).status_code == 403  # history only
        assert auditor.get(srv.url("/fhir/AuditEvent")).status_code == 200
        assert auditor.get(srv.url(history)).status_code == 200
        # the refusals are in the trail: Audit Log Used (110101), serious failure
        refused = wait_for(lambda: [e for e in auditor.get(srv.url("/audit"), params={
            "event": "110101", "outcome": "8"}).json()["events"]
            if e["participants"][0]["userId"].startswith("commonName=harness")], what="110101")
        assert len(refused) >= 3 and refused[0]["schemaValid"]
        assert {e["participants"][0]["userId"].split(",")[0] for e in refused} == {"commonName=harness"}


def _s_client(port: int, ca: str, cert: str | None = None, key: str | None = None) -> None:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca, "-quiet",
            "-no_ign_eof"]
    if cert:
        argv += ["-cert", cert, "-key", key]
    subprocess.run(argv, input=b"GET /health HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)


def _alerts(srv, listener: str) -> list[dict]:
    with _as(srv, "auditor") as auditor:
        events = auditor.get(srv.url("/audit"), params={"event": "110113"}).json()["events"]
    out = []
    for e in events:
        r = auditor_xml(srv, e["id"])
        if f"{listener}: TLS handshake refused" in r:
            out.append(e)
    return out


def auditor_xml(srv, pk: int) -> str:
    out = srv.run_cli(["audit", "list", "--event", "110113", "--json", "--xml", "--limit", "1000"])
    return next((e["xml"] for e in json.loads(out.stdout) if e["id"] == pk), "")


@pytest.mark.parametrize("listener", ["https", "mllp"])
def test_refused_tls_handshakes_are_audited_as_node_authentication_failures(tls_server, tmp_path,
                                                                           listener):
    srv = tls_server
    port = srv.port if listener == "https" else srv.mllp_port
    _, _, ca = srv.client_cert()
    # an untrusted certificate: issued by another CA
    rogue = tmp_path / "rogue"
    rogue_cert, rogue_key = pki.issue(rogue, "rogue")
    before = len(_alerts(srv, listener))
    _s_client(port, ca)                                      # no certificate
    _s_client(port, ca, str(rogue_cert), str(rogue_key))     # untrusted certificate
    alerts = wait_for(lambda: (lambda a: a if len(a) >= before + 2 else None)(_alerts(srv, listener)),
                      what=f"the {listener} alerts")
    for e in alerts[:2]:
        assert e["types"][0]["code"] == "110126" and e["schemaValid"]
        assert any(p["networkAccessPoint"] == "127.0.0.1" for p in e["participants"])
    # a trusted node is still served
    cert, key, _ = srv.client_cert("harness")
    if listener == "https":
        with _as(srv, "harness") as ok:
            assert ok.get(srv.url("/health")).status_code == 200
    else:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"\x0b" + adt("A01", cx(new_local(), LOCAL, "HOSP")).encode() + b"\x1c\r")
            assert b"MSA|AA" in s.recv(65536)


def test_rendered_documents_and_summaries_readable_only_by_health_data_readers(tls_server):
    """The CDA web routes are health data: the policy refuses nodes that are not configured
    health-data readers, the audit reader included (it audits accesses, not records)."""
    srv = tls_server
    ins = F.new_ins().split("^")[0]
    with _as(srv, "harness") as nobody, _as(srv, "auditor") as auditor, \
            _as(srv, "portal") as portal:
        for path in (f"/patients/{ins}/summary", "/documents/1.2.250.1.999.1.html"):
            for client in (nobody, auditor):
                r = client.get(srv.url(path))
                assert r.status_code == 403 and "not a health-data reader" in r.text, r.text
            # allowed: the answer is about the content (nothing stored for these ids)
            assert portal.get(srv.url(path)).status_code == 404
