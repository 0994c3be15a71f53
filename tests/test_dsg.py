"""XAdES-signed submission sets (IHE DSG, the DMP's rule against falsification) at ITI-41
on the real server, ``opendmp push --sign``, and our signature checked by Debian's
``xmlsec1``.

The development server (``OPENDMP_DSG`` optional) trusts its development CA
(``$OPENDMP_HOME/pki``); signers are issued by ``opendmp ca issue``. Every refusal must be
XDSRepositoryMetadataError with a readable reason, and nothing of the submission stored.
"""
from __future__ import annotations

import base64
import hashlib
import random
import shutil
import subprocess
from pathlib import Path

import factory as F
import pytest
from lxml import etree
from xds import NS, error_codes, find_documents, repository_unique_id, status

from cda import generator
from registry import vocabulary as V
from repository.source import DocumentContent, provide_and_register, retrieve
from soapstack.client import SoapClient
from xua.dsg import DS, Signer, sign_submission

CDA_ENV = {"OPENDMP_PATIENT_DOMAINS": "1.2.250.1.213.1.4.8,1.2.250.1.213.1.4.9,"
                                      "1.2.250.1.213.1.4.10,1.2.250.1.213.1.4.11",
           "OPENDMP_FACILITY_PRACTICE_SETTING": "AMBULATOIRE^Ambulatoire^1.2.250.1.213.1.1.4.9",
           "OPENDMP_FACILITY_TYPE": "SA01^Etablissement public de santé^1.2.250.1.71.4.2.4"}


@pytest.fixture(scope="module")
def dsg_server(module_server_factory):
    srv = module_server_factory(env=CDA_ENV)
    assert srv.run_cli(["ca", "issue", "dsg-signer"]).returncode == 0
    return srv


def _signer(srv) -> Signer:
    pki = Path(srv.home) / "pki"
    return Signer.from_files(pki / "dsg-signer.key", pki / "dsg-signer.pem")


def _new_patient(srv) -> str:
    patient = F.new_ins()
    assert srv.run_cli(["patient", "add", patient]).returncode == 0
    return patient


def _signed(patient: str, signer: Signer, n_docs: int = 3):
    """A submission of ``n_docs`` documents and its signature: (sub, contents by id)."""
    sub = F.submission(patient, n_docs=n_docs)
    data = {}
    for de in sub.documents:
        de.hash = de.size = de.repository_unique_id = None
        data[de.id] = f"<doc>{de.unique_id}</doc>".encode()
    sig, signature = sign_submission(sub, data, signer)
    data[sig.id] = signature
    return sub, data


def _send(srv, sub, data: dict[str, bytes]) -> etree._Element:
    client = SoapClient(srv.url("/xds/repository"))
    reply = provide_and_register(client, sub, {k: DocumentContent.of(v, "text/xml")
                                               for k, v in data.items()})
    try:
        return reply.payload
    finally:
        reply.close()
        client.close()


def _reasons(answer: etree._Element) -> str:
    return " | ".join(answer.xpath(".//rs:RegistryError/@codeContext", namespaces=NS))


def _nothing_stored(srv, patient: str, sub) -> None:
    assert find_documents(srv, patient).find(".//rim:ExtrinsicObject", NS) is None
    client = SoapClient(srv.url("/xds/repository"))
    try:
        response, docs = retrieve(client, repository_unique_id(srv),
                                  [de.unique_id for de in sub.documents])
    finally:
        client.close()
    assert docs == [] and status(response) == "Failure"


def _refused(srv, patient, sub, data, needle: str) -> None:
    answer = _send(srv, sub, data)
    assert status(answer) == "Failure", etree.tostring(answer)
    assert set(error_codes(answer)) == {"XDSRepositoryMetadataError"}, _reasons(answer)
    assert needle in _reasons(answer), _reasons(answer)
    _nothing_stored(srv, patient, sub)


def test_signed_submission_of_three_documents_is_stored_with_its_signature(dsg_server):
    patient = _new_patient(dsg_server)
    sub, data = _signed(patient, _signer(dsg_server))
    answer = _send(dsg_server, sub, data)
    assert status(answer) == "Success", _reasons(answer)
    found = find_documents(dsg_server, patient)
    stored = set(found.xpath(".//rim:ExtrinsicObject/rim:ExternalIdentifier[@identificationScheme="
                             "'urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab']/@value",
                             namespaces=NS))
    assert stored == {de.unique_id for de in sub.documents}  # 3 documents + the signature
    classes = [c.get("nodeRepresentation") for c in found.iterfind(
        ".//rim:Classification[@classificationScheme='urn:uuid:41a5887f-8865-4c09-adf7-"
        "e362475b143a']", NS)]
    assert "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1" in classes, (stored, classes)


def test_signature_with_an_altered_manifest_digest_is_refused(dsg_server):
    patient = _new_patient(dsg_server)
    sub, data = _signed(patient, _signer(dsg_server))
    sig_id = sub.documents[-1].id
    root = etree.fromstring(data[sig_id])
    value = root.find(f".//{{{DS}}}Manifest/{{{DS}}}Reference[2]/{{{DS}}}DigestValue")
    value.text = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    data[sig_id] = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    _refused(dsg_server, patient, sub, data, "the signature does not verify")


def test_document_changed_after_signing_is_refused(dsg_server):
    patient = _new_patient(dsg_server)
    sub, data = _signed(patient, _signer(dsg_server))
    first = sub.documents[0]
    data[first.id] = b"<doc>falsified</doc>"
    _refused(dsg_server, patient, sub, data,
             f"document {first.unique_id} does not match its digest")


def test_document_added_after_signing_is_refused(dsg_server):
    patient = _new_patient(dsg_server)
    sub, data = _signed(patient, _signer(dsg_server))
    extra = F.document_entry(patient)
    extra.hash = extra.size = extra.repository_unique_id = None
    sub.documents.append(extra)
    sub.associations.append(F.member(sub.submission_sets[0].id, extra.id))
    data[extra.id] = b"<doc>added later</doc>"
    _refused(dsg_server, patient, sub, data, f"does not cover document(s) {extra.unique_id}")


def test_signature_by_an_untrusted_certificate_is_refused(dsg_server):
    from test_xua_unit import make_cert

    patient = _new_patient(dsg_server)
    key, cert = make_cert("Mallory signer")  # self-signed: not under the trusted CA
    sub, data = _signed(patient, Signer(key, cert))
    _refused(dsg_server, patient, sub, data, "the signer is not trusted")


def test_signature_of_another_submission_set_is_refused(dsg_server):
    """A genuine signature replayed on another submission set of the same documents."""
    patient = _new_patient(dsg_server)
    sub, data = _signed(patient, _signer(dsg_server))
    sub.submission_sets[0].unique_id = F.new_oid()
    _refused(dsg_server, patient, sub, data, "neither the submission set nor one of its")


def test_signature_entry_with_wrong_format_code_is_refused(dsg_server):
    patient = _new_patient(dsg_server)
    sub, data = _signed(patient, _signer(dsg_server))
    sub.documents[-1].format_code = F.code("urn:ihe:iti:xds-sd:text:2008",
                                           "1.3.6.1.4.1.19376.1.2.3", "texte")
    _refused(dsg_server, patient, sub, data, "formatCode")


def test_required_mode_refuses_an_unsigned_submission_and_accepts_a_signed_one(
        module_server_factory):
    srv = module_server_factory(env={"OPENDMP_DSG": "required"})
    assert srv.run_cli(["ca", "issue", "dsg-signer"]).returncode == 0
    patient = _new_patient(srv)
    sub = F.submission(patient, n_docs=2)
    data = {}
    for de in sub.documents:
        de.hash = de.size = de.repository_unique_id = None
        data[de.id] = f"<doc>{de.unique_id}</doc>".encode()
    _refused(srv, patient, sub, data, "is not signed")
    sub, data = _signed(patient, _signer(srv), n_docs=2)
    answer = _send(srv, sub, data)
    assert status(answer) == "Success", _reasons(answer)


def test_push_sign_stores_the_document_and_the_signature(dsg_server, tmp_path):
    ins, _, _ = generator.random_ins(random.Random())
    patient = f"{ins}^^^&1.2.250.1.213.1.4.10&ISO"
    dsg_server.run_cli(["patient", "add", patient + "^NH"], check=True)
    cda = tmp_path / "report.xml"
    cda.write_bytes(generator.lab_report(ins=ins, results=2))
    pki = Path(dsg_server.home) / "pki"
    out = dsg_server.run_cli(["push", "--no-validate", "--to", dsg_server.url("/xds/repository"),
                              "--sign", str(pki / "dsg-signer.key"),
                              "--sign-cert", str(pki / "dsg-signer.pem"), str(cda)])
    assert out.returncode == 0, out.stdout + out.stderr
    found = find_documents(dsg_server, patient)
    formats = sorted(c.get("nodeRepresentation") for c in found.iterfind(
        ".//rim:Classification[@classificationScheme='urn:uuid:a09d5840-386c-46f2-b5ad-"
        "9c3699a4309d']", NS))
    assert len(found.findall(".//rim:ExtrinsicObject", NS)) == 2, formats
    assert "http://www.w3.org/2000/09/xmldsig#" in formats
    signs = [a for a in found.iterfind(".//rim:Association", NS)
             if a.get("associationType") == V.SIGNS]
    assert signs == [] or len(signs) == 1  # FindDocuments returns no associations


@pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="Debian xmlsec1 not installed")
def test_our_signature_verifies_with_debian_xmlsec1(tmp_path):
    from atna.pki import issue

    pem, key = issue(tmp_path / "pki", "signer")
    sub, data = _signed(F.new_ins(), Signer.from_files(key, pem))
    sig = tmp_path / "signature.xml"
    sig.write_bytes(data[sub.documents[-1].id])
    # xmlsec1 cannot resolve the manifest's urn:oid: references (documents travel beside
    # the signature): it verifies SignedInfo (Manifest + SignedProperties digests, the
    # signature value and the certificate against the CA); we check the manifest digests.
    ok = subprocess.run(["xmlsec1", "--verify", "--ignore-manifests", "--trusted-pem",
                         str(tmp_path / "pki" / "ca.pem"), str(sig)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "SignedInfo References (ok/all): 2/2" in ok.stderr
    root = etree.parse(str(sig)).getroot()
    root.find(f".//{{{DS}}}Manifest/{{{DS}}}Reference[2]/{{{DS}}}DigestValue").text = "AAAA"
    sig.write_bytes(etree.tostring(root))
    bad = subprocess.run(["xmlsec1", "--verify", "--ignore-manifests", "--trusted-pem",
                          str(tmp_path / "pki" / "ca.pem"), str(sig)],
                         capture_output=True, text=True)
    assert bad.returncode != 0
