"""ITI-19 node authentication on the HTTP endpoints: with ``OPENDMP_HTTP_TLS=1`` every
connection needs TLS >= 1.2 and a client certificate from the trust store; the
authenticated node (certificate subject) is what the audit trail records."""
from __future__ import annotations

import ssl
import subprocess

import factory as F
import httpx
import pytest
from xds import ITI18, FIND_DOCUMENTS, adhoc_query


@pytest.fixture
def tls_server(server_factory):
    return server_factory(env={"OPENDMP_HTTP_TLS": "1"})


def _client(srv, with_cert: bool = True) -> httpx.Client:
    cert, key, ca = srv.client_cert()
    context = ssl.create_default_context(cafile=ca)
    if with_cert:
        context.load_cert_chain(cert, key)
    return httpx.Client(verify=context, timeout=20)


def test_trusted_client_certificate_is_served_and_recorded_in_the_audit(tls_server):
    from soapstack.client import SoapClient

    patient = F.new_ins()
    with _client(tls_server) as http:
        assert http.get(tls_server.url("/health")).status_code == 200
        client = SoapClient(tls_server.url("/xds/registry"), client=http)
        q = adhoc_query(FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": f"'{patient}'",
            "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"})
        assert client.call(ITI18, q).payload.get("status").endswith(":Success")
    # the ITI-18 audit message names the authenticated node as the requesting user
    audit = tls_server.run_cli(["audit", "list", "--transaction", "ITI-18", "--json", "--xml"])
    assert audit.returncode == 0, audit.stderr
    assert "commonName=harness,organizationName=OpenDMP" in audit.stdout, audit.stdout[:3000]


def test_client_without_certificate_is_refused(tls_server):
    with pytest.raises(httpx.HTTPError):
        with _client(tls_server, with_cert=False) as http:
            http.get(tls_server.url("/health"))


def test_plain_http_is_refused(tls_server):
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.url("/health").replace("https://", "http://"), timeout=10)


def test_openssl_s_client_without_certificate_gets_no_answer(tls_server):
    _, _, ca = tls_server.client_cert()
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-CAfile", ca,
         "-tls1_2", "-quiet"],
        input=b"GET /health HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
    assert b"200 OK" not in proc.stdout
    assert proc.returncode != 0 or b"alert" in proc.stderr.lower()
