"""The access policy (opendmp/policy.py) on the real server: a VIHF assertion naming a
patient (resource-id) discloses nothing of another patient through the read paths that
name no patient in the request — ITI-18 by UUID / uniqueId and ITI-43.

Development server (XUA optional, the development IdP trusted); documents are stored
without assertion, then read with the assertion of one patient.
"""
from __future__ import annotations

import time

import factory as F
import httpx
import pytest
from lxml import etree
from xds import GET_DOCUMENTS, ITI18, NS, adhoc_query, find_documents, repository_unique_id, status

from repository.source import DocumentContent, provide_and_register, retrieve_request
from soapstack.client import SoapClient
from soapstack.envelope import SoapFault
from xua.idp import VihfClaims, issue, security_header

ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
GET_SS_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
SECURITY_ALERT = "110113"


def _store(srv, patient: str) -> tuple[str, str, bytes]:
    """One document for ``patient``: (entryUUID, uniqueId, bytes); and the SS uniqueId."""
    content = f"<doc>{patient}</doc>".encode()
    sub = F.submission(patient, content=content)
    de = sub.documents[0]
    de.hash = de.size = de.repository_unique_id = None  # the repository sets them
    reply = provide_and_register(SoapClient(srv.url("/xds/repository")), sub,
                                 {de.id: DocumentContent.of(content, "text/xml")})
    try:
        assert status(reply.payload) == "Success", etree.tostring(reply.payload)[:1000]
    finally:
        reply.close()
    found = find_documents(srv, patient)
    eo = found.find(".//rim:ExtrinsicObject", NS)
    return eo.get("id"), de.unique_id, sub.submission_sets[0].unique_id


def _assertion_for(srv, patient: str):
    ins, _, _, authority = patient.split("^")[:4]
    return issue(srv.home, VihfClaims(ins=ins, ins_oid=authority.split("&")[1]))


@pytest.fixture(scope="module")
def two_patients(module_server_factory):
    srv = module_server_factory()
    mine, other = F.new_ins(), F.new_ins()
    for p in (mine, other):
        assert srv.run_cli(["patient", "add", p]).returncode == 0
    return srv, (mine, _store(srv, mine)), (other, _store(srv, other))


def _query(srv, assertion, query_id: str, params: dict):
    client = SoapClient(srv.url("/xds/registry"))
    try:
        return client.call(ITI18, adhoc_query(query_id, params),
                           headers=[security_header(assertion)]).payload
    finally:
        client.close()


def _refused(call) -> SoapFault:
    with pytest.raises(SoapFault) as info:
        call()
    return info.value


def _security_alerts(srv) -> list[dict]:
    r = httpx.get(srv.url("/audit"), params={"type": SECURITY_ALERT}, timeout=10)
    return [e for e in r.json()["events"] if e["event"]["code"] == SECURITY_ALERT] \
        if r.status_code == 200 else []


def _wait_for_alert(srv, before: int) -> list[dict]:
    """A new DICOM Security Alert (110113) in the ARR since ``before`` were counted (the
    JSON view carries no description: the count tells this refusal's alert arrived)."""
    deadline = time.time() + 20
    while time.time() < deadline:
        alerts = _security_alerts(srv)
        if len(alerts) > before:
            return alerts
        time.sleep(0.5)
    raise AssertionError("no new Security Alert for the refusal")


def test_get_documents_by_uuid_of_another_patient_is_refused_same_patient_allowed(two_patients):
    srv, (mine, (my_uuid, my_uid, _)), (other, (their_uuid, their_uid, _)) = two_patients
    assertion = _assertion_for(srv, mine)
    ok = _query(srv, assertion, GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": f"('{my_uuid}')"})
    assert status(ok) == "Success"
    assert [e.get("id") for e in ok.findall(".//rim:ExtrinsicObject", NS)] == [my_uuid]
    before = len(_security_alerts(srv))
    fault = _refused(lambda: _query(srv, assertion, GET_DOCUMENTS,
                                    {"$XDSDocumentEntryEntryUUID": f"('{their_uuid}')"}))
    assert fault.subcode.endswith("FailedAuthentication"), fault.subcode
    assert "another patient" in fault.reason
    assert other.split("^")[0] not in fault.reason  # the refusal discloses nothing of them
    _wait_for_alert(srv, before)
    # by uniqueId too, and the ObjectRef answer as well
    fault = _refused(lambda: _query(srv, assertion, GET_DOCUMENTS,
                                    {"$XDSDocumentEntryUniqueId": f"('{their_uid}')"}))
    assert fault.subcode.endswith("FailedAuthentication")
    ok = _query(srv, assertion, GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": f"('{my_uid}')"})
    assert status(ok) == "Success" and len(ok.findall(".//rim:ExtrinsicObject", NS)) == 1


def test_get_submission_set_and_contents_of_another_patient_is_refused(two_patients):
    srv, (mine, (_, _, my_ss)), (_, (_, _, their_ss)) = two_patients
    assertion = _assertion_for(srv, mine)
    ok = _query(srv, assertion, GET_SS_AND_CONTENTS, {"$XDSSubmissionSetUniqueId": f"'{my_ss}'"})
    assert status(ok) == "Success" and ok.find(".//rim:RegistryPackage", NS) is not None
    fault = _refused(lambda: _query(srv, assertion, GET_SS_AND_CONTENTS,
                                    {"$XDSSubmissionSetUniqueId": f"'{their_ss}'"}))
    assert fault.subcode.endswith("FailedAuthentication")


def _retrieve(srv, assertion, unique_ids: list[str]):
    client = SoapClient(srv.url("/xds/repository"))
    reply = client.call(ITI43, retrieve_request(repository_unique_id(srv), unique_ids),
                        headers=[security_header(assertion)])
    try:
        payload = reply.payload
        return (payload.find(".//rs:RegistryResponse", NS).get("status").rsplit(":", 1)[-1],
                [a.read() for a in (reply.attachments or {}).values()])
    finally:
        reply.close()
        client.close()


def test_iti43_of_another_patients_document_is_refused_and_audited(two_patients):
    srv, (mine, (_, my_uid, _)), (other, (_, their_uid, _)) = two_patients
    assertion = _assertion_for(srv, mine)
    got, docs = _retrieve(srv, assertion, [my_uid])
    assert got == "Success" and docs == [f"<doc>{mine}</doc>".encode()]
    before = len(_security_alerts(srv))
    fault = _refused(lambda: _retrieve(srv, assertion, [their_uid]))
    assert fault.subcode.endswith("FailedAuthentication") and "another patient" in fault.reason
    assert other.split("^")[0] not in fault.reason
    _wait_for_alert(srv, before)
    # one document of the other patient among ours: the whole request is refused
    fault = _refused(lambda: _retrieve(srv, assertion, [my_uid, their_uid]))
    assert fault.subcode.endswith("FailedAuthentication")
    # an unknown document is still the repository's XDSDocumentUniqueIdError, not a refusal
    got, docs = _retrieve(srv, assertion, [F.new_oid()])
    assert got == "Failure" and docs == []


def _history(srv, patient: str) -> list[dict]:
    from urllib.parse import quote
    r = httpx.get(srv.url(f"/audit/patients/{quote(patient, safe='')}/access-history"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["accesses"]


def test_refused_disclosures_appear_in_the_access_history_of_the_patient_asked_for(module_server_factory):
    """CSP art. L. 1111-19: the patient whose documents were asked for sees the refused
    attempt (ITI-43 and ITI-18 by UUID), although the fault itself names nobody."""
    srv = module_server_factory()
    mine, other = F.new_ins(), F.new_ins()
    for p in (mine, other):
        assert srv.run_cli(["patient", "add", p]).returncode == 0
    _store(srv, mine)
    their_uuid, their_uid, _ = _store(srv, other)
    assertion = _assertion_for(srv, mine)
    _refused(lambda: _retrieve(srv, assertion, [their_uid]))
    _refused(lambda: _query(srv, assertion, GET_DOCUMENTS,
                            {"$XDSDocumentEntryEntryUUID": f"('{their_uuid}')"}))
    deadline = time.time() + 20
    while True:
        refused = [(a["transaction"], a["result"]) for a in _history(srv, other)
                   if a["result"] == "refused"]
        if len(refused) >= 2 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert sorted(refused) == [("ITI-18", "refused"), ("ITI-43", "refused")]
