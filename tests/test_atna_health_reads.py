"""The plain-HTTP reads of health data (``GET /documents/<uniqueId>.html``,
``GET /patients/<INS>/summary``, :mod:`cda.web`) are audited, granted or refused, and
reach the patient's access history (CSP art. L. 1111-19), through the real server under
mutual TLS: the reader is the certificate subject."""
from __future__ import annotations

import json
import random
import ssl
import time
from urllib.parse import quote

import httpx
import pytest
from test_atna_server import wait_for
from xds import status

from cda import generator
from cda.metadata import Facility, parse_code
from cda.push import submission_for
from repository.source import DocumentContent, provide_and_register
from soapstack.client import SoapClient

INS_TEST = "1.2.250.1.213.1.4.10"
ENV = {"OPENDMP_HTTP_TLS": "1", "OPENDMP_AUDIT_READERS": "auditor",
       "OPENDMP_AUDIT_HISTORY_READERS": "portal", "OPENDMP_HEALTH_DATA_READERS": "portal",
       "OPENDMP_PATIENT_DOMAINS": f"1.2.250.1.213.1.4.8,{INS_TEST}",
       "OPENDMP_FACILITY_PRACTICE_SETTING": "AMBULATOIRE^Ambulatoire^1.2.250.1.213.1.1.4.9",
       "OPENDMP_FACILITY_TYPE": "SA01^Etablissement public de santé^1.2.250.1.71.4.2.4"}
FACILITY = Facility(parse_code(ENV["OPENDMP_FACILITY_PRACTICE_SETTING"]),
                    parse_code(ENV["OPENDMP_FACILITY_TYPE"]))


@pytest.fixture(scope="module")
def srv(module_server_factory):
    return module_server_factory(env=ENV)


def _as(srv, name: str) -> httpx.Client:
    cert, key, ca = srv.client_cert(name)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return httpx.Client(verify=ctx, timeout=30)


def _pushed(srv) -> tuple[str, str, str]:
    """(INS, patient CX, document uniqueId) of a CR-BIO lab report submitted by ITI-41."""
    ins, _, _ = generator.random_ins(random.Random())
    patient = f"{ins}^^^&{INS_TEST}&ISO"
    srv.run_cli(["patient", "add", patient + "^NH"], check=True)
    data = generator.lab_report(ins=ins, results=3, blood_group="O-")
    sub = submission_for(data, FACILITY)
    de = sub.documents[0]
    with _as(srv, "harness") as http:
        client = SoapClient(srv.url("/xds/repository"), client=http)
        answer = provide_and_register(client, sub, {de.id: DocumentContent.of(data)}).payload
    assert status(answer) == "Success"
    return ins, patient, de.unique_id


def _history(srv, client: httpx.Client, patient: str) -> dict:
    r = client.get(srv.url(f"/audit/patients/{quote(patient, safe='')}/access-history"))
    assert r.status_code == 200, r.text
    return r.json()


def test_reads_and_refused_reads_of_a_document_and_a_summary_are_in_the_access_history(srv):
    ins, patient, uid = _pushed(srv)
    document, summary = f"/documents/{uid}.html", f"/patients/{ins}/summary"
    with _as(srv, "portal") as portal, _as(srv, "harness") as nobody:
        r = portal.get(srv.url(document))
        assert r.status_code == 200 and ins in r.text
        r = portal.get(srv.url(summary))
        assert r.status_code == 200 and r.json()["blood_group"]["value"] == "O-"
        for path in (document, summary):  # not a health-data reader
            assert nobody.get(srv.url(path)).status_code == 403

        h = wait_for(lambda: (lambda h: h if h["count"] >= 5 else None)(
            _history(srv, portal, patient)), what="five accesses")
        time.sleep(1.5)  # anything else would have arrived by now (same spool, same sender)
        h = _history(srv, portal, patient)
    rows = [(a["access"], a["transaction"], a["result"], a["outcome"],
             (a["who"]["node"] or "").split(",")[0], a["documents"]) for a in h["accesses"]]
    assert rows[:4] == [
        ("reading", "patient-summary", "refused", 8, "commonName=harness", []),
        ("reading", "document-html", "refused", 8, "commonName=harness", [uid]),
        ("reading", "patient-summary", "granted", 0, "commonName=portal", []),
        ("reading", "document-html", "granted", 0, "commonName=portal", [uid]),
    ], json.dumps(h, indent=1)
    assert [(a["access"], a["transaction"], a["result"]) for a in h["accesses"][4:]] == [
        ("submission", "ITI-41", "granted")], json.dumps(h, indent=1)
    refused, read = h["accesses"][0], h["accesses"][2]
    assert refused["who"]["user"].startswith("commonName=harness")
    assert "403 Forbidden" in refused["description"] and "not a health-data reader" in \
        refused["description"]
    assert read["who"]["user"].startswith("commonName=portal") and read["description"] is None
    # the command line says the same
    out = srv.run_cli(["audit", "history", patient, "--json"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accesses"] == h["accesses"]


def test_the_read_messages_are_valid_export_events_naming_the_patient_and_the_document(srv):
    ins, patient, uid = _pushed(srv)
    unknown = f"1.2.250.1.999.{random.randrange(10**9)}"
    with _as(srv, "portal") as portal, _as(srv, "auditor") as auditor:
        assert portal.get(srv.url(f"/documents/{uid}.html")).status_code == 200
        assert portal.get(srv.url(f"/documents/{unknown}.html")).status_code == 404

        def events(entity: str) -> list[dict]:
            return auditor.get(srv.url("/audit"), params={"entity": entity, "event": "110106",
                                                          "transaction": "document-html"}
                               ).json()["events"]

        read = wait_for(lambda: events(uid), what="the read's audit message")
        missing = wait_for(lambda: events(unknown), what="the unknown document's message")
    assert len(read) == 1 and len(missing) == 1
    e = read[0]
    assert e["schemaValid"] and e["action"] == "R" and e["outcome"] == 0
    assert e["patients"] == [patient] and e["documents"] == [uid]
    source, reader = e["participants"]
    assert source["roles"] == ["110153"] and not source["requestor"]
    assert source["userId"].endswith(f"/documents/{uid}.html")
    assert reader["roles"] == ["110152"] and reader["requestor"]
    assert reader["userId"].startswith("commonName=portal")
    assert reader["networkAccessPoint"] == "127.0.0.1"
    # an unknown document: a minor failure naming the document only (no patient to name)
    m = missing[0]
    assert m["schemaValid"] and m["outcome"] == 4
    assert m["patients"] == [] and m["documents"] == [unknown]
