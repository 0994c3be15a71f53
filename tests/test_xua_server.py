"""XUA on the real server: the NIST testkit XUA variants and an end-to-end ITI-18.

The NIST XDS Toolkit's ``reg_xua``/PR.b/R.b variants (``11897_*`` FindDocuments,
``11966_*`` Provide and Register, ``11990_*`` Register; shared/corpus/messages/nist-testkit)
use SAML assertions from the toolkit's own STS; each is reproduced here with an assertion
from our development IdP carrying the defect the variant's name describes, sent to the
real server (``OPENDMP_XUA=required``), and the outcome compared with the variant's
``<ExpectedStatus>`` (Fault, or Success for ``withauthzconsent``).
"""
from __future__ import annotations

import copy
import datetime as dt
import time
from pathlib import Path

import factory as F
import httpx
import pytest
from lxml import etree
from xds import ITI18, ITI42, NS, find_documents, status

from registry.ebrim import submit_objects_request
from repository.source import DocumentContent, provide_and_register_request
from soapstack.client import SoapClient
from soapstack.envelope import SoapFault
from soapstack.namespaces import SOAP12, WSSE
from xua.idp import PURPOSE, ROLE, VihfClaims, issue, security_header

NIST = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "nist-testkit" / "tests"
ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
#: the step directory holding each test's transaction (and its ExpectedStatus)
STEP = {"11897": "approved", "11966": "submit", "11990": "submit"}


def _attr(a, name):
    return next(x for x in a.iter(f"{{{SAML2}}}Attribute") if x.get("Name") == name)


def _duplicate_attr(name):
    def mutate(a):
        at = _attr(a, name)
        at.addnext(copy.deepcopy(at))
    return mutate


def _second_authn_context(a):
    ctx = a.find(f"{{{SAML2}}}AuthnStatement/{{{SAML2}}}AuthnContext")
    ctx.addnext(copy.deepcopy(ctx))


def _invalid_authn_statement(a):
    st = a.find(f"{{{SAML2}}}AuthnStatement")
    del st.attrib["AuthnInstant"]  # SAML Core §2.7.2: AuthnInstant is required


def _consent(claims):
    claims.extra_attributes.append(("urn:ihe:iti:bppc:2007:docid", "1.3.6.1.4.1.21367.2005.3.7.1"))


def variant_assertion(home: Path, variant: str, patient_cx: str):
    """A development-IdP assertion reproducing the NIST variant ``variant``."""
    ins, _, _, authority = patient_cx.split("^")[:4]
    claims = VihfClaims(ins=ins, ins_oid=authority.split("&")[1])
    now = dt.datetime.now(dt.timezone.utc)
    mutate = None
    if variant == "expired":
        claims.issue_instant = now - dt.timedelta(hours=2)
        claims.lifetime = dt.timedelta(hours=1)
    elif variant == "notyetvalid":
        claims.not_before = now + dt.timedelta(hours=1)
        claims.not_on_or_after = now + dt.timedelta(hours=2)
    elif variant == "unknownaudience":
        claims.audience = "http://unknown.audience.example/xds"
    elif variant == "invalidauthnstatement":
        mutate = _invalid_authn_statement
    elif variant == "secondauthncontext":
        mutate = _second_authn_context
    elif variant == "secondpurposeofuse":
        mutate = _duplicate_attr(PURPOSE)
    elif variant == "secondrole":
        mutate = _duplicate_attr(ROLE)
    elif variant == "withauthzconsent":
        _consent(claims)
    elif variant != "unsigned":
        raise ValueError(variant)
    if variant == "unsigned":
        from xua.idp import build_vihf

        return build_vihf(claims)
    return issue(home, claims, mutate=mutate)


def _variants() -> list[tuple[str, str, str]]:
    out = []
    for d in [p for t in STEP for p in sorted(NIST.glob(f"{t}_*"))]:
        test, _, variant = d.name.partition("_")
        if test not in STEP or not variant or variant == "valid":
            continue
        plan = d / STEP[test] / "testplan.xml"
        expected = etree.parse(str(plan)).findtext(".//ExpectedStatus")
        out.append((test, variant, expected.strip()))
    return sorted(set(out))


VARIANTS = _variants()


def _call(client: SoapClient, action, body, assertion):
    headers = [security_header(assertion)] if assertion is not None else None
    try:
        reply = client.call(action, body, headers=headers)
    except SoapFault as fault:
        return "Fault", fault
    return status(reply.payload), reply.payload


def _transaction(server, test: str, patient: str, assertion):
    if test == "11897":
        from xds import FIND_DOCUMENTS, adhoc_query

        body = adhoc_query(FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": f"'{patient}'",
            "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"})
        return _call(SoapClient(server.url("/xds/registry")), ITI18, body, assertion)
    sub = F.submission(patient)
    if test == "11966":
        de = sub.documents[0]
        de.hash = de.size = de.repository_unique_id = None
        body, _ = provide_and_register_request(
            sub, {de.id: DocumentContent.of(b"<doc>NIST 11966 XUA</doc>", "text/xml")}, mtom=False)
        return _call(SoapClient(server.url("/xds/repository")), ITI41, body, assertion)
    return _call(SoapClient(server.url("/xds/registry")), ITI42, submit_objects_request(sub),
                 assertion)


@pytest.fixture
def required_server(server_factory):
    return server_factory(env={"OPENDMP_XUA": "required"})


@pytest.mark.skipif(not VARIANTS, reason="NIST testkit corpus not available")
def test_nist_xua_variants_reproduced_with_dev_idp_have_the_expected_outcome(required_server):
    srv = required_server
    outcomes, expected = {}, {}
    for test, variant, want in VARIANTS:
        patient = F.new_ins()
        assert srv.run_cli(["patient", "add", patient]).returncode == 0
        got, detail = _transaction(srv, test, patient, variant_assertion(srv.home, variant, patient))
        outcomes[f"{test}_{variant}"] = got
        expected[f"{test}_{variant}"] = want
        if got == "Fault":
            assert detail.subcode.startswith(f"{{{WSSE}}}") or detail.subcode.startswith("wsse:") \
                or ":" in detail.subcode, detail.subcode
            assert detail.reason
    assert outcomes == expected
    assert len(outcomes) == 21


def test_required_mode_refuses_a_request_without_assertion(required_server):
    patient = F.new_ins()
    got, fault = _transaction(required_server, "11897", patient, None)
    assert got == "Fault" and "InvalidSecurity" in fault.subcode


def _find_with(srv, patient, assertion_bytes: bytes | None):
    """ITI-18 FindDocuments over HTTP with the assertion bytes spliced in as they are."""
    from xds import FIND_DOCUMENTS, adhoc_query
    from soapstack.client import build_envelope

    body = adhoc_query(FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": f"'{patient}'",
        "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"})
    env = build_envelope(ITI18, srv.url("/xds/registry"), body)
    if assertion_bytes is not None:
        sec = (f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:soap="{SOAP12}" '
               f'soap:mustUnderstand="true">').encode() + assertion_bytes + b"</wsse:Security>"
        env = env.replace(b"</soap:Header>", sec + b"</soap:Header>", 1)
    return httpx.post(srv.url("/xds/registry"), content=env, timeout=60,
                      headers={"Content-Type": "application/soap+xml; charset=UTF-8"})


def test_iti18_with_vihf_succeeds_and_one_changed_byte_is_refused_and_audited(server_factory):
    """End to end on the development server (XUA optional, dev IdP trusted)."""
    srv = server_factory()
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    ins, _, _, authority = patient.split("^")[:4]
    assertion = issue(srv.home, VihfClaims(ins=ins, ins_oid=authority.split("&")[1]))
    raw = etree.tostring(assertion)
    ok = _find_with(srv, patient, raw)
    assert ok.status_code == 200, ok.text[:1000]
    answer = etree.fromstring(ok.content).find(".//query:AdhocQueryResponse", NS)
    assert status(answer) == "Success"
    # the same request with one byte of the assertion changed
    i = raw.index(b"DOCTEUR Jean") + len(b"DOCTEUR Jea")
    tampered = raw[:i] + b"m" + raw[i + 1:]
    bad = _find_with(srv, patient, tampered)
    assert bad.status_code == 400
    from xds import fault

    code, subcode, reason = fault(bad)
    assert code.endswith("Sender") and subcode.endswith("FailedCheck"), (subcode, reason)
    assert "digest" in reason.lower()
    # no assertion: accepted in the development default (optional)
    assert find_documents(srv, patient) is not None
    # the refusal is audited: DICOM Security Alert (110113) in the ARR
    deadline = time.time() + 20
    found = []
    while time.time() < deadline and not found:
        r = httpx.get(srv.url("/audit"), params={"type": "110113"}, timeout=10)
        if r.status_code == 200:
            found = [e for e in r.json()["events"] if e["event"]["code"] == "110113"]
        if not found:
            time.sleep(0.5)
    assert found, "no Security Alert audit event for the refused assertion"


def test_idp_issue_cli_prints_an_assertion_the_server_accepts(server_factory):
    srv = server_factory()
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    ins, _, _, authority = patient.split("^")[:4]
    out = srv.run_cli(["idp", "issue", "--profession", "10", "--ins", ins,
                       "--ins-oid", authority.split("&")[1], "--mode", "bris_de_glace"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.lstrip().startswith("<saml2:Assertion")
    ok = _find_with(srv, patient, out.stdout.strip().encode())
    assert ok.status_code == 200, ok.text[:1000]


def test_vihf_for_another_patient_is_refused_at_iti18(server_factory):
    """The resource-id patient must be the patient of the request (FailedAuthentication)."""
    srv = server_factory()
    patient, other = F.new_ins(), F.new_ins()
    for p in (patient, other):
        assert srv.run_cli(["patient", "add", p]).returncode == 0
    ins, _, _, authority = patient.split("^")[:4]
    raw = etree.tostring(issue(srv.home, VihfClaims(ins=ins, ins_oid=authority.split("&")[1])))
    assert _find_with(srv, patient, raw).status_code == 200
    refused = _find_with(srv, other, raw)
    assert refused.status_code == 400
    from xds import fault

    _, subcode, reason = fault(refused)
    assert subcode.endswith("FailedAuthentication") and "assertion authorizes" in reason


def test_responses_are_signed_when_configured_and_verify_with_ours_and_xmlsec1(server_factory,
                                                                              tmp_path):
    import shutil
    import subprocess

    from cryptography import x509
    from soapstack.wssecurity import SecurityPolicy, verify_security
    from test_xua_unit import make_cert

    key, cert = make_cert("OpenDMP registry")
    (tmp_path / "k.pem").write_bytes(key)
    (tmp_path / "c.pem").write_bytes(cert)
    srv = server_factory(env={"OPENDMP_XUA_SIGN_KEY": str(tmp_path / "k.pem"),
                              "OPENDMP_XUA_SIGN_CERT": str(tmp_path / "c.pem")})
    patient = F.new_ins()
    answer = _find_with(srv, patient, None)
    assert answer.status_code == 200, answer.text[:500]
    root = etree.fromstring(answer.content)
    policy = SecurityPolicy(require_assertion=False, require_message_signature=True,
                            trusted_clients=(x509.load_pem_x509_certificate(cert),))
    assert verify_security(root, policy).message_signer is not None
    if shutil.which("xmlsec1"):
        (tmp_path / "answer.xml").write_bytes(answer.content)
        proc = subprocess.run(
            ["xmlsec1", "--verify", "--pubkey-cert-pem", str(tmp_path / "c.pem"),
             "--id-attr:Id", f"{SOAP12}:Body",
             "--id-attr:Id", "http://docs.oasis-open.org/wss/2004/01/"
                             "oasis-200401-wss-wssecurity-utility-1.0.xsd:Timestamp",
             "--node-xpath", "//*[local-name()='Security']/*[local-name()='Signature']",
             str(tmp_path / "answer.xml")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
