"""CDA through the real server: `opendmp push` of every corpus CDA, ITI-18 finds each with
the derived metadata, ITI-43 returns identical bytes; the ITI-41 cross-check (strict/warn);
the patient summary (GET /patients/<INS>/summary) and the HTML rendering
(GET /documents/<uniqueId>.html)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
from lxml import etree
from xds import error_codes, find_documents, status

from cda import generator
from cda.metadata import Facility, derive, parse_code
from cda.push import submission_for
from registry.ebrim import parse_registry_object_list
from repository.source import DocumentContent, provide_and_register, retrieve
from soapstack.client import SoapClient
from soapstack.namespaces import RIM, RS

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "messages" / "cda"
ALL_CDA = sorted(CORPUS.rglob("*.xml"))
ANS_CDA = sorted((CORPUS / "ans-ci-sis").glob("*.xml"))
CORPUS_INS = "279035121518989"
CORPUS_PATIENT = f"{CORPUS_INS}^^^&1.2.250.1.213.1.4.10&ISO"
ENV = {"OPENDMP_PATIENT_DOMAINS": "1.2.250.1.213.1.4.8,1.2.250.1.213.1.4.9,"
                                  "1.2.250.1.213.1.4.10,1.2.250.1.213.1.4.11",
       "OPENDMP_FACILITY_PRACTICE_SETTING": "AMBULATOIRE^Ambulatoire^1.2.250.1.213.1.1.4.9",
       "OPENDMP_FACILITY_TYPE": "SA01^Etablissement public de santé^1.2.250.1.71.4.2.4"}
FACILITY = Facility(parse_code(ENV["OPENDMP_FACILITY_PRACTICE_SETTING"]),
                    parse_code(ENV["OPENDMP_FACILITY_TYPE"]))


@pytest.fixture(scope="module")
def cda_server(module_server_factory):
    srv = module_server_factory(env=ENV)
    srv.run_cli(["patient", "add", CORPUS_PATIENT + "^NH"], check=True)
    return srv


@pytest.fixture(scope="module")
def pushed(cda_server):
    """`opendmp push` of every corpus CDA (without pre-validation: the corpus has one
    official example with a malformed time zone that validation would hold back)."""
    result = cda_server.run_cli(["push", "--no-validate", "--to",
                                 cda_server.url("/xds/repository"), *map(str, ALL_CDA)],
                                timeout=300)
    return result


def _new_patient(server) -> tuple[str, str]:
    ins, _, _ = generator.random_ins(random.Random())
    server.run_cli(["patient", "add", f"{ins}^^^&1.2.250.1.213.1.4.10&ISO^NH"], check=True)
    return ins, f"{ins}^^^&1.2.250.1.213.1.4.10&ISO"


def _repo(server) -> SoapClient:
    return SoapClient(server.url("/xds/repository"))


def test_push_prints_one_result_per_document(pushed):
    lines = [ln for ln in pushed.stdout.splitlines() if ln.startswith("[")]
    assert len(lines) == len(ALL_CDA)
    for path in ANS_CDA:
        [line] = [ln for ln in lines if str(path) in ln]
        assert ": Success uniqueId=" in line, line
    for path in set(ALL_CDA) - set(ANS_CDA):   # HL7 samples: no INS, not sent
        [line] = [ln for ln in lines if str(path) in ln]
        assert "not sent" in line and "no INS" in line
    assert f"{len(ANS_CDA)}/{len(ALL_CDA)} documents accepted" in pushed.stdout
    assert pushed.returncode == 1


def test_iti18_finds_every_pushed_document_with_the_derived_metadata(cda_server, pushed):
    answer = find_documents(cda_server, CORPUS_PATIENT)
    assert status(answer) == "Success"
    found = {de.unique_id: de for de in
             parse_registry_object_list(answer.find(f"{{{RIM}}}RegistryObjectList")).documents}
    assert len(found) == len(ANS_CDA)
    for path in ANS_CDA:
        data = path.read_bytes()
        _, want = derive(data, FACILITY)
        got = found[want.unique_id]
        for field in ("mime_type", "patient_id", "source_patient_id", "creation_time",
                      "service_start_time", "service_stop_time", "language_code",
                      "legal_authenticator"):
            assert getattr(got, field) == getattr(want, field), (path.name, field)
        assert sorted(got.source_patient_info) == sorted(want.source_patient_info)
        for field in ("class_code", "type_code", "format_code", "practice_setting_code",
                      "healthcare_facility_type_code"):
            g, w = getattr(got, field), getattr(want, field)
            assert (g.code, g.scheme, g.display[0].value) == \
                (w.code, w.scheme, w.display[0].value), (path.name, field)
        assert [(c.code, c.scheme) for c in got.confidentiality_codes] == \
            [(c.code, c.scheme) for c in want.confidentiality_codes]
        assert sorted(c.key for c in got.event_codes) == sorted(c.key for c in want.event_codes)
        assert [a.person for a in got.authors] == [a.person for a in want.authors]
        assert [a.institutions for a in got.authors] == [a.institutions for a in want.authors]
        assert [a.specialties for a in got.authors] == [a.specialties for a in want.authors]
        assert got.title[0].value == want.title[0].value
        assert int(got.size) == len(data)


def test_iti43_returns_identical_bytes(cda_server, pushed):
    answer = find_documents(cda_server, CORPUS_PATIENT)
    docs = parse_registry_object_list(answer.find(f"{{{RIM}}}RegistryObjectList")).documents
    repo_id = docs[0].repository_unique_id
    response, retrieved = retrieve(_repo(cda_server), repo_id, [d.unique_id for d in docs])
    assert status(response) == "Success"
    by_uid = {r.document_unique_id: r.content for r in retrieved}
    for path in ANS_CDA:
        _, de = derive(path.read_bytes(), FACILITY)
        assert by_uid[de.unique_id] == path.read_bytes(), path.name


def test_patient_summary_json(cda_server, pushed):
    r = httpx.get(cda_server.url(f"/patients/{CORPUS_INS}/summary"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    s = json.loads(r.text)
    assert s["ins"] == CORPUS_INS
    tsh = [x for x in s["lab_results"] if x.get("code") == "3016-3"
           and x["document_unique_id"] == "1.2.250.1.213.1.1.1.55.2024.9.1"]
    assert tsh == [{"label": "Thyréostimuline [Arbitraire/Volume] Sérum/Plasma ; Numérique",
                    "code": "3016-3", "code_system": "2.16.840.1.113883.6.1", "value": "1.950",
                    "unit": "m[IU]/L", "reference_range": "0.270-4.200 m[IU]/L",
                    "interpretation": "N", "effective_time": "20140402145521+0200",
                    "document_unique_id": "1.2.250.1.213.1.1.1.55.2024.9.1"}]
    assert any(v.get("code") == "68747507" for v in s["vaccinations"])
    assert s["allergies"] and s["treatments"]
    assert httpx.get(cda_server.url("/patients/100000000000000/summary")).status_code == 404
    assert httpx.get(cda_server.url("/patients/<script>/summary")).status_code == 400


def test_rendered_document_served_with_strict_csp(cda_server, pushed):
    r = httpx.get(cda_server.url("/documents/1.2.250.1.213.1.1.1.55.2024.9.1.html"))
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "Thyroxine libre (FT4)" in r.text and CORPUS_INS in r.text
    assert httpx.get(cda_server.url("/documents/1.2.3.html")).status_code == 404


def test_blood_group_from_a_pushed_generated_lab_report(cda_server):
    ins, patient = _new_patient(cda_server)
    data = generator.lab_report(ins=ins, results=4, blood_group="AB+")
    sub = submission_for(data, FACILITY)
    de = sub.documents[0]
    answer = provide_and_register(_repo(cda_server), sub, {de.id: DocumentContent.of(data)}).payload
    assert status(answer) == "Success", etree.tostring(answer)
    s = httpx.get(cda_server.url(f"/patients/{ins}/summary")).json()
    assert s["blood_group"]["value"] == "AB+" and len(s["lab_results"]) == 4


def test_validating_push_holds_back_an_invalid_document(cda_server, tmp_path):
    trod = CORPUS / "ans-ci-sis" / "BIO-TROD_2024.01_COVID-19.xml"
    result = cda_server.run_cli(["push", "--to", cda_server.url("/xds/repository"), str(trod)])
    assert result.returncode == 1
    assert "not sent" in result.stdout and "legal authenticator has no valid time" in result.stdout


def _contradicting(server, ins, patient, **change):
    data = generator.lab_report(ins=ins, results=2)
    sub = submission_for(data, FACILITY)
    de = sub.documents[0]
    for k, v in change.items():
        setattr(de, k, v)
    answer = provide_and_register(_repo(server), sub, {de.id: DocumentContent.of(data)}).payload
    return answer, de, data


def test_iti41_refuses_a_cda_whose_header_contradicts_its_metadata(cda_server):
    ins, patient = _new_patient(cda_server)
    other_ins, other = _new_patient(cda_server)
    answer, de, _ = _contradicting(cda_server, ins, patient, creation_time="20200101000000")
    assert status(answer) == "Failure" and error_codes(answer) == ["XDSRepositoryMetadataError"]
    context = answer.find(f".//{{{RS}}}RegistryError").get("codeContext")
    assert "creationTime: metadata 20200101000000 is not the document's effectiveTime" in context
    # another registered patient: refused, naming both
    data = generator.lab_report(ins=ins, results=2)
    sub = submission_for(data, FACILITY)
    for o in (*sub.submission_sets, *sub.documents):
        o.patient_id = other + "^NH"
    sub.documents[0].source_patient_id = other + "^NH"
    sub.documents[0].type_code.code = "11488-4"
    answer = provide_and_register(_repo(cda_server), sub,
                                  {sub.documents[0].id: DocumentContent.of(data)}).payload
    context = answer.find(f".//{{{RS}}}RegistryError").get("codeContext")
    assert f"patient: metadata {other} is not the document's recordTarget ({ins}" in context
    assert "typeCode: metadata 11488-4" in context
    assert find_documents(cda_server, other).find(f"{{{RIM}}}RegistryObjectList") is None or \
        not len(find_documents(cda_server, other).find(f"{{{RIM}}}RegistryObjectList"))


def test_iti41_non_cda_xml_and_doctype_cda(cda_server):
    ins, patient = _new_patient(cda_server)
    data = generator.lab_report(ins=ins, results=1)
    sub = submission_for(data, FACILITY)
    plain = b"<?xml version='1.0'?><!-- " + b"x" * 10000 + b" --><report>ClinicalDocument</report>"
    answer = provide_and_register(_repo(cda_server), sub,
                                  {sub.documents[0].id: DocumentContent.of(plain)}).payload
    assert status(answer) == "Success"      # not a CDA: nothing to compare
    sub = submission_for(data, FACILITY)
    evil = data.replace(b"<ClinicalDocument", b'<!DOCTYPE ClinicalDocument [<!ENTITY e "x">]>'
                        b"<ClinicalDocument", 1)
    answer = provide_and_register(_repo(cda_server), sub,
                                  {sub.documents[0].id: DocumentContent.of(evil)}).payload
    assert status(answer) == "Failure"
    assert "cannot be read safely: DTDs and entity declarations are not allowed in CDA " \
        "documents" in answer.find(f".//{{{RS}}}RegistryError").get("codeContext")


def _refusal(server, sub, data) -> str:
    answer = provide_and_register(_repo(server), sub,
                                  {sub.documents[0].id: DocumentContent.of(data)}).payload
    assert status(answer) == "Failure" and error_codes(answer) == ["XDSRepositoryMetadataError"]
    return answer.find(f".//{{{RS}}}RegistryError").get("codeContext")


def test_iti41_refuses_hostile_cda_headers(cda_server):
    """Entity bomb, external entity, a header over 1 MiB, a CDA hidden behind 1 MiB of
    prolog, a malformed header: refused with what is wrong; nothing is registered."""
    ins, patient = _new_patient(cda_server)
    data = generator.lab_report(ins=ins, results=1)
    body = data.index(b"<component><structuredBody>")
    root = data.index(b"<ClinicalDocument")
    laughs = b'<!ENTITY l0 "lol">' + b"".join(
        b'<!ENTITY l%d "%s">' % (n, b"&l%d;" % (n - 1) * 10) for n in range(1, 10))
    bomb = b"<!DOCTYPE ClinicalDocument [" + laughs + b"]>" + \
        data[root:].replace(b"<title>", b"<title>&l9;", 1)
    xxe = b'<!DOCTYPE ClinicalDocument [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + \
        data[root:].replace(b"<title>", b"<title>&e;", 1)
    cases = {
        "DTDs and entity declarations are not allowed in CDA documents": [bomb, xxe],
        "the header is larger than 1048576 bytes":
            [data[:body] + b"<!--" + b"x" * (2 << 20) + b"-->" + data[body:]],
        "no root element in the first 1048576 bytes":
            [data[:root] + b"<!--" + b"x" * (2 << 20) + b"-->" + data[root:]],
        "malformed XML": [data.replace(b"</title>", b"</titel>", 1)],
    }
    for message, documents in cases.items():
        for evil in documents:
            context = _refusal(cda_server, submission_for(data, FACILITY), evil)
            assert "the CDA document cannot be read safely: " + message in context, context
    found = find_documents(cda_server, patient).find(f"{{{RIM}}}RegistryObjectList")
    assert found is None or not len(found)


@pytest.mark.parametrize("megabytes", [12, 40])
def test_iti41_cda_with_a_large_pdf_body_is_checked_stored_and_returned(cda_server, megabytes):
    """CDA level 1 whose base64 PDF is one text node over libxml2's 10,000,000-character
    limit: only the header is parsed, so the document is accepted (the 12 MB one was
    refused before) and ITI-43 returns the same bytes; the header is still compared."""
    ins, patient = _new_patient(cda_server)
    data = generator.unstructured_report(pdf_bytes=megabytes * 10**6 * 3 // 4, ins=ins)
    text = data[data.index(b'representation="B64">'):data.index(b"</text>")]
    assert len(text) > 10_000_000 and (megabytes > 16 or len(data) < 16 * 1024 * 1024)
    sub = submission_for(data, FACILITY)
    de = sub.documents[0]
    assert de.format_code.code == "urn:ihe:iti:xds-sd:pdf:2008"
    answer = provide_and_register(_repo(cda_server), sub, {de.id: DocumentContent.of(data)}).payload
    assert status(answer) == "Success", etree.tostring(answer)
    response, [doc] = retrieve(_repo(cda_server), de.repository_unique_id or
                               _repository_id(cda_server, patient), [de.unique_id])
    assert status(response) == "Success" and doc.content == data
    if megabytes == 12:     # the header of a large document still has to agree
        sub = submission_for(data, FACILITY)
        sub.documents[0].creation_time = "20200101000000"
        assert "creationTime: metadata 20200101000000" in _refusal(cda_server, sub, data)


def _repository_id(server, patient) -> str:
    answer = find_documents(server, patient)
    docs = parse_registry_object_list(answer.find(f"{{{RIM}}}RegistryObjectList")).documents
    return docs[0].repository_unique_id


def test_iti41_warn_mode_accepts_with_a_warning(server_factory):
    srv = server_factory(env={**ENV, "OPENDMP_CDA_CHECK": "warn"})
    ins, patient = _new_patient(srv)
    answer, de, data = _contradicting(srv, ins, patient, creation_time="20200101000000")
    assert status(answer) == "Success"
    [warning] = answer.iter(f"{{{RS}}}RegistryError")
    assert warning.get("severity").endswith(":Warning")
    assert warning.get("errorCode") == "XDSRepositoryMetadataError"
    assert "creationTime" in warning.get("codeContext")
    assert "the CDA header contradicts the metadata" in srv.log_text()
