"""DICOM PS3.15 audit messages: the corpus's ITI-20 records (IPF, Swiss EPR, MESA, ahdis)
are read into typed records, schema-valid ones marked valid and the others kept with the
schema error the corpus predicts; the messages we emit validate against the DICOM schema."""
from __future__ import annotations

import base64

import pytest
from corpus import cases, corpus_path
from lxml import etree

from atna import events as ev
from atna.message import NotAnAuditMessage, parse_audit, read_index
from atna.syslog import StreamFramer, parse_rfc5424

AUDIT_XML_CASES = cases(lambda r: r["transaction"].startswith("ITI-20 audit record"))


def test_corpus_has_the_iti20_rows():
    assert len(AUDIT_XML_CASES) >= 45


@pytest.mark.parametrize("case", AUDIT_XML_CASES, ids=lambda c: c["case_id"])
def test_corpus_audit_record_is_read_and_validated_as_the_corpus_predicts(case):
    data = corpus_path(case["files"]).read_bytes()
    record = parse_audit(data)
    assert record.outcome == int(case["expected_outcome"].rsplit("=", 1)[1])
    expected_event = case["transaction"].split("(")[1].rstrip(")")
    codes = {record.event_id.code, *(c.code for c in record.event_types)}
    assert expected_event in codes
    if case["schema_check"].startswith("valid"):
        assert record.valid, record.schema_errors
    else:
        assert not record.valid
        # the corpus quotes libxml2's message; ours comes from the same schema
        predicted = case["schema_check"].split("Element '", 1)[1].split("'", 1)[0]
        assert any(predicted in e for e in record.schema_errors), record.schema_errors


def test_rfc3881_legacy_codes_are_read():
    record = parse_audit(corpus_path("messages/mesa/msgs/atna/13520-1.xml").read_bytes())
    assert record.event_id.code == "110106" and record.action == "R"
    assert record.patient_ids == ["13520"]
    assert [p.roles[0].code for p in record.participants] == ["110154", "110153"]
    assert record.participants[1].is_requestor  # "TRUE" in RFC 3881 samples


def test_swiss_epr_iti18_query_indexes_patient_and_query():
    record = parse_audit(corpus_path("messages/epr-by-example/samples/iti-18-log.xml").read_bytes())
    assert record.patient_ids == ["d5e42fed-5962-4bb9-b8b6-5d9e8afb0f2a^^^&1.3.6.1.4.1.21367.2017.2.5.93&ISO"]
    query = [o for o in record.objects if o.role == "24"][0]
    assert b"AdhocQueryRequest" in base64.b64decode(query.query)
    assert "761337610410035724" in record.user_ids


def test_ahdis_octet_counted_frame_is_delimited_and_parsed():
    raw = corpus_path("messages/ahdis-epr/iti-47-atna-raw.txt").read_bytes()
    events = StreamFramer().feed(raw)
    assert len(events) == 1
    msg = parse_rfc5424(events[0].data)
    assert msg.msgid == "IHE+RFC-3881" and msg.hostname == "matchbox.test"
    record = parse_audit(msg.msg)
    assert [c.code for c in record.event_types] == ["ITI-47"] and record.valid


@pytest.mark.parametrize("payload", [b"not xml", b"<Other/>", b"<AuditMessage/>",
                                     b'<!DOCTYPE x [<!ENTITY a "b">]><AuditMessage/>', b""])
def test_non_audit_payloads_are_refused(payload):
    with pytest.raises(NotAnAuditMessage):
        parse_audit(payload)


X = ev.Exchange("http://www.w3.org/2005/08/addressing/anonymous", "10.1.2.3", "commonName=lab",
                "http://opendmp.example/xds/registry", "opendmp.example")
PATIENT = "1840575123456^^^&1.2.250.1.213.1.4.8&ISO^NH"


@pytest.mark.parametrize("dataset", [
    ev.iti18_registry(X, 0, b"<query:AdhocQueryRequest/>", "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d",
                      PATIENT, "urn:oid:1.2.3"),
    ev.iti18_registry(X, 8, b"<q/>", "", None, description="SOAP fault: bad"),
    ev.import_event("ITI-42", X, 0, PATIENT, "1.2.3.4"),
    ev.import_event("ITI-41", X, 8, None, None, "Failure: XDSRepositoryMetadataError"),
    ev.iti42_export("https://registry.example/xds", 0, PATIENT, "1.2.3.4"),
    ev.iti43_repository(X, 4, [("1.2.3.5", "1.2.3.6", "urn:oid:1.2.3"), ("1.2.3.7", "1.2.3.6", None)]),
    ev.application_activity(True, "opendmp serve", "root"),
    ev.application_activity(False, "opendmp serve"),
    ev.security_alert(ev.NODE_AUTHENTICATION, "opendmp-arr", "TLS handshake refused", "10.9.9.9"),
    ev.health_data_read(ev.DOCUMENT_HTML, "https://h/documents/1.2.3.5.html", "commonName=portal",
                        "10.1.2.3", 0, [PATIENT], "1.2.3.5"),
    ev.health_data_read(ev.PATIENT_SUMMARY, "https://h/patients/x/summary", None, "10.1.2.3", 8,
                        description="403 Forbidden: not a health-data reader"),
    ev.health_data_read(ev.DOCUMENT_HTML, "https://h/documents/9.9.html", None, "::1", 4,
                        document="9.9", description="404 Not Found: no such document"),
], ids=["iti18", "iti18-fault", "iti42", "iti41-failure", "iti42-export", "iti43", "start", "stop",
        "alert", "http-read", "http-read-refused", "http-read-unknown"])
def test_our_audit_messages_validate_against_the_dicom_schema(dataset):
    xml = ev.build(dataset)
    record = parse_audit(xml)
    assert record.valid, record.schema_errors
    assert record.outcome == dataset.outcome
    root = etree.fromstring(xml)
    if dataset.event_id[0] != "110100":  # application activity: the launcher is optional
        assert root.find("ActiveParticipant[@UserIsRequestor='true']") is not None
    assert root.find("AuditSourceIdentification").get("AuditSourceID")


def test_iti18_message_carries_the_query_base64_and_its_encoding():
    body = b"<query:AdhocQueryRequest xmlns:query='urn:x'>\xc3\xa9</query:AdhocQueryRequest>"
    record = parse_audit(ev.build(ev.iti18_registry(X, 0, body, "urn:uuid:q", PATIENT)))
    query = [o for o in record.objects if o.role == "24"][0]
    assert base64.b64decode(query.query) == body
    assert ("QueryEncoding", base64.b64encode(b"UTF-8").decode()) in query.details
    assert query.id_type.code == "ITI-18" and record.patient_ids == [PATIENT]
    source = [p for p in record.participants if p.roles[0].code == "110153"][0]
    assert source.network_access_point == "10.1.2.3" and source.user_name == "commonName=lab"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(user=st.text(max_size=60), patient=st.text(min_size=1, max_size=60),
       description=st.text(max_size=80), query=st.binary(max_size=300))
def test_emitted_messages_stay_well_formed_and_valid_whatever_the_values(user, patient, description, query):
    x = ev.Exchange(user, "10.0.0.1", user, "http://h/xds/registry", "h")
    record = parse_audit(ev.build(ev.iti18_registry(x, 8, query, "urn:uuid:q", patient, None, description)))
    assert record.outcome == 8
    clean = ev._INVALID_XML.sub("", user)
    assert record.participants[0].user_id == (clean or (ev.ANONYMOUS if not user else "unknown"))
    assert base64.b64decode([o for o in record.objects if o.role == "24"][0].query) == query


# --- the ARR's ingest reads only the indexed fields (atna.message.read_index); they must be
# exactly what the typed record says, and the same payloads must be refused.

def _index_of(record) -> dict:
    return {"event_id": record.event_id.code, "action": record.action, "outcome": record.outcome,
            "event_time": record.event_time, "event_types": [c.code for c in record.event_types],
            "source_id": record.source_id, "user_ids": record.user_ids,
            "network_access_points": [p.network_access_point for p in record.participants
                                      if p.network_access_point],
            "patient_ids": record.patient_ids, "document_ids": record.document_ids,
            "submission_set_ids": record.submission_set_ids, "schema_errors": record.schema_errors}


def _read_index_as_dict(data: bytes) -> dict:
    index = read_index(data)
    assert index.xml is data
    return {k: getattr(index, k) for k in _index_of(parse_audit(data))}


TRICKY = [
    # namespaced elements, a comment among the children, RFC 3881 codes, two EventTypeCodes,
    # a submission set known by its class UUID only, a document, an offset time
    b'<a:AuditMessage xmlns:a="urn:x"><!-- c --><a:EventIdentification EventActionCode="C" '
    b'EventDateTime="2026-01-02T03:04:05.123456789+02:00" EventOutcomeIndicator="4">'
    b'<a:EventID code="110107" displayName="Import"/><a:EventTypeCode code="ITI-42"/>'
    b'<a:EventTypeCode code="X"/></a:EventIdentification>'
    b'<a:ActiveParticipant UserID="u" AlternativeUserID="alt" NetworkAccessPointID="1.2.3.4"/>'
    b'<a:ActiveParticipant UserID="" NetworkAccessPointID=""/>'
    b'<a:AuditSourceIdentification AuditSourceID="s1"/><a:AuditSourceIdentification AuditSourceID="s2"/>'
    b'<a:ParticipantObjectIdentification ParticipantObjectID="ss" ParticipantObjectTypeCode="2">'
    b'<a:ParticipantObjectIDTypeCode>urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd</a:ParticipantObjectIDTypeCode>'
    b'</a:ParticipantObjectIdentification>'
    b'<a:ParticipantObjectIdentification ParticipantObjectID="doc" ParticipantObjectTypeCode="2" '
    b'ParticipantObjectTypeCodeRole="3"/>'
    b'<a:ParticipantObjectIdentification ParticipantObjectID="job" ParticipantObjectTypeCodeRole="20"/>'
    b'</a:AuditMessage>',
    # outcome that is not a number, no source, no participants
    b'<AuditMessage><EventIdentification EventDateTime="2026-01-02T03:04:05" '
    b'EventOutcomeIndicator="x"><EventID csd-code="110100"/></EventIdentification></AuditMessage>',
]


@pytest.mark.parametrize("data", [corpus_path(c["files"]).read_bytes() for c in AUDIT_XML_CASES]
                         + TRICKY, ids=[c["case_id"] for c in AUDIT_XML_CASES]
                         + [f"tricky-{i}" for i in range(len(TRICKY))])
def test_ingest_index_equals_the_typed_record(data):
    assert _read_index_as_dict(data) == _index_of(parse_audit(data))


def test_ingest_index_of_our_messages_equals_the_typed_record():
    for dataset in [ev.iti18_registry(X, 0, b"<q/>", "urn:uuid:q", PATIENT, "urn:oid:1.2.3"),
                    ev.import_event("ITI-42", X, 0, PATIENT, "1.2.3.4"),
                    ev.iti43_repository(X, 4, [("1.2.3.5", "1.2.3.6", "urn:oid:1.2.3")])]:
        xml = ev.build(dataset)
        assert _read_index_as_dict(xml) == _index_of(parse_audit(xml))


@pytest.mark.parametrize("payload", [
    b"not xml", b"<Other/>", b"<AuditMessage/>", b"",
    b'<!DOCTYPE x [<!ENTITY a "b">]><AuditMessage/>',
    b'<AuditMessage><EventIdentification EventDateTime="2026-01-02T03:04:05"/></AuditMessage>',
    b'<AuditMessage><EventIdentification EventDateTime="2026-01-02T03:04:05"><EventID csd-code=""/>'
    b'</EventIdentification></AuditMessage>',
    b'<AuditMessage><EventIdentification EventDateTime="yesterday"><EventID csd-code="1"/>'
    b'</EventIdentification></AuditMessage>',
    b'<AuditMessage><EventIdentification><EventID csd-code="1"/></EventIdentification></AuditMessage>'])
def test_ingest_index_refuses_what_the_typed_record_refuses(payload):
    with pytest.raises(NotAnAuditMessage):
        parse_audit(payload)
    with pytest.raises(NotAnAuditMessage):
        read_index(payload)


def test_http_read_route_names_are_the_event_types_the_history_reads_as_reading():
    """cda.web names its routes without importing atna: the names must be the builders'
    EventTypeCodes, and the history must list them as reads."""
    from atna.history import _KINDS
    from cda import web

    for route in (web.DOCUMENT_HTML, web.PATIENT_SUMMARY):
        assert ev.HTTP_READ_TYPES[route][0] == route and _KINDS[route] == "reading"


@pytest.mark.parametrize("status, outcome", [(200, 0), (404, 4), (403, 8), (400, 8), (413, 8),
                                             (415, 8), (500, 12)])
def test_http_read_outcome_follows_the_answer(status, outcome):
    from atna.hooks import http_outcome

    assert http_outcome(status) == outcome
