"""HTTP access to the audit trail: ``GET /audit`` (JSON) and ``GET /fhir/AuditEvent``
(IHE RESTful ATNA, ITI-81: a FHIR R4 searchset Bundle of AuditEvent resources).

ITI-81 search parameters served: ``date`` (with ``ge``/``gt``/``le``/``lt``/``eq``
prefixes, repeatable), ``patient`` (a CX, or ``Patient/<CX>``), ``patient.identifier``
(``system|value``; ``urn:oid:`` systems become the CX assigning authority), ``entity``
and ``entity-id`` (any participant object id), ``type`` (EventID, ``system|code`` or
``code``), ``subtype`` (EventTypeCode, e.g. ``ITI-18``), ``outcome``, ``user``/``altid``/
``agent-name`` (an active participant's user id), ``address``, ``source``, ``_count``.
The DICOM → FHIR mapping follows FHIR R4 AuditEvent's "DICOM" mapping and ITI-81 §3.81.
"""
from __future__ import annotations

import json
from typing import Callable
from urllib.parse import parse_qsl

from sqlalchemy import Engine

from opendmp.db import read_transaction

from . import events as ev
from opendmp.policy import HISTORY, TRAIL, HttpReaders, Reader, may_read
from soapstack.wsgi import peer_subject
from .history import accesses
from .message import AuditRecord
from .query import AuditQuery, StoredAudit, iso, parse_when, run_query, to_json

HISTORY_PREFIX = "/audit/patients/"
HISTORY_SUFFIX = "/access-history"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE_EVENT_TYPE = "urn:ihe:event-type-code"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE = "http://terminology.hl7.org/CodeSystem/network-type"  # not a coding: plain code


class BadRequest(ValueError):
    pass


def _code_value(token: str) -> str:
    return token.split("|", 1)[1] if "|" in token else token


def _split(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def query_from_params(params: list[tuple[str, str]], fhir: bool) -> AuditQuery:
    q = AuditQuery()
    try:
        for name, value in params:
            if name in ("date", "since", "until"):
                if name != "date":
                    setattr(q, name, parse_when(value, upper=name == "until"))
                    continue
                prefix, rest = (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") \
                    else ("eq", value)
                if prefix in ("ge", "gt"):
                    q.since = parse_when(rest, upper=prefix == "gt" and len(rest) == 10)
                elif prefix in ("le", "lt"):
                    q.until = parse_when(rest, upper=prefix == "le")
                else:
                    q.since, q.until = parse_when(rest), parse_when(rest, upper=True) \
                        if len(rest) == 10 else parse_when(rest) + 1
            elif name == "patient":
                q.patients += [v[len("Patient/"):] if v.startswith("Patient/") else v
                               for v in _split(value)]
            elif name == "patient.identifier":
                for v in _split(value):
                    system, _, ident = v.rpartition("|")
                    oid = system[len("urn:oid:"):] if system.startswith("urn:oid:") else system
                    q.patients.append(f"{ident}^^^&{oid}&ISO" if oid else ident)
            elif name in ("entity", "entity-id", "document", "submissionset"):
                q.entities += [_code_value(v) for v in _split(value)]
            elif name == "type" or (name == "event" and not fhir):
                q.event_ids += [_code_value(v) for v in _split(value)]
            elif name in ("subtype", "transaction"):
                q.event_types += [_code_value(v) for v in _split(value)]
            elif name == "outcome":
                q.outcomes += [int(_code_value(v)) for v in _split(value)]
            elif name in ("user", "altid", "agent-name", "agent"):
                q.users += _split(value)
            elif name == "address":
                q.addresses += _split(value)
            elif name in ("source", "site"):
                q.sources += [_code_value(v) for v in _split(value)]
            elif name in ("_count", "limit"):
                q.limit = int(value)
            elif name in ("_offset", "offset"):
                q.offset = int(value)
            elif name in ("_format",):
                pass
            else:
                raise BadRequest(f"unknown search parameter {name!r}")
    except (ValueError, TypeError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"invalid search parameter value: {exc}") from None
    return q


def _coding(code, system: str | None = None) -> dict:
    out = {"system": system or code.system, "code": code.code}
    if code.display:
        out["display"] = code.display
    return {k: v for k, v in out.items() if v}


def _event_type_system(code) -> str | None:
    if code.code.startswith("ITI-") or (code.system or "").startswith("IHE"):
        return IHE_EVENT_TYPE
    if (code.system or "") == "DCM":
        return DCM
    return code.system


def to_fhir(item: StoredAudit) -> dict:
    rec: AuditRecord = item.record
    resource: dict = {
        "resourceType": "AuditEvent",
        "id": str(item.pk),
        "type": _coding(rec.event_id, DCM if (rec.event_id.system or "DCM") == "DCM" else None),
        "recorded": iso(rec.event_time),
        "outcome": str(rec.outcome),
    }
    if rec.event_types:
        resource["subtype"] = [_coding(c, _event_type_system(c)) for c in rec.event_types]
    if rec.action:
        resource["action"] = rec.action
    if rec.purposes:
        resource["purposeOfEvent"] = [{"coding": [_coding(c)]} for c in rec.purposes]
    agents = []
    for p in rec.participants:
        agent: dict = {"who": {"identifier": {"value": p.user_id}}, "requestor": p.is_requestor}
        if p.alt_user_id:
            agent["altId"] = p.alt_user_id
        if p.user_name:
            agent["name"] = p.user_name
        if p.roles:
            agent["type"] = {"coding": [_coding(p.roles[0], DCM if p.roles[0].system == "DCM" else None)]}
            if len(p.roles) > 1:
                agent["role"] = [{"coding": [_coding(r)]} for r in p.roles[1:]]
        if p.network_access_point:
            agent["network"] = {"address": p.network_access_point}
            if p.network_access_point_type:
                agent["network"]["type"] = p.network_access_point_type
        agents.append(agent)
    resource["agent"] = agents or [{"who": {"display": "unknown"}, "requestor": False}]
    source: dict = {"observer": {"display": rec.source_id or "unknown"}}
    if rec.source_site:
        source["site"] = rec.source_site
    if rec.source_types:
        source["type"] = [{"system": SOURCE_TYPE, "code": t} for t in rec.source_types]
    resource["source"] = source
    entities = []
    for o in rec.objects:
        entity: dict = {"what": {"identifier": {"value": o.object_id}}}
        if o.type_code:
            entity["type"] = {"system": ENTITY_TYPE, "code": o.type_code}
        if o.role:
            entity["role"] = {"system": OBJECT_ROLE, "code": o.role}
        if o.name:
            entity["name"] = o.name
        if o.query:
            entity["query"] = o.query
        if o.details:
            entity["detail"] = [{"type": t, "valueBase64Binary": v} for t, v in o.details]
        if o.id_type and o.id_type.code:
            entity["what"]["identifier"]["type"] = {"coding": [_coding(o.id_type)]}
        entities.append(entity)
    if entities:
        resource["entity"] = entities
    return resource


def _document_ids(conn, patient: str, limit: int = 5000) -> list[str]:
    """The uniqueIds of the patient's documents in our registry: a retrieve (ITI-43)
    names documents, not the patient, when no assertion says whose record it is."""
    from sqlalchemy import select

    from opendmp.schema import patient as P
    from opendmp.schema import registry_object as RO
    from registry.store import Kind

    from registry.hl7types import cx_match_key

    return list(conn.execute(
        select(RO.c.unique_id).join(P, RO.c.patient_pk == P.c.pk)
        .where(P.c.cx == cx_match_key(patient),
               RO.c.kind.in_([Kind.STABLE_DOCUMENT, Kind.ON_DEMAND_DOCUMENT]),
               RO.c.unique_id.is_not(None))
        .limit(limit)).scalars())


def patient_history(conn, patient: str, limit: int = 1000, own_source: str | None = None):
    """The access history of ``patient`` (:mod:`atna.history`), newest first: the audit
    records naming the patient, and those naming one of the patient's documents."""
    items = {i.pk: i for i in run_query(conn, AuditQuery(patients=[patient], limit=limit))}
    docs = _document_ids(conn, patient)
    for start in range(0, len(docs), 500):
        for i in run_query(conn, AuditQuery(entities=docs[start:start + 500], limit=limit)):
            items.setdefault(i.pk, i)
    ordered = sorted(items.values(), key=lambda i: (i.record.event_time, i.pk), reverse=True)
    return accesses(ordered[:limit], own_source)


def audit_routes(engine: Engine, access: HttpReaders | None = None, auditor=None,
                 own_source: str | None = None) -> dict[str, Callable]:
    """``extra_routes`` for :class:`soapstack.wsgi.SoapApplication`. Every read goes
    through :func:`opendmp.policy.may_read`; a refused one is answered 403 and audited."""
    access = access or HttpReaders()

    def _answer(start_response, status: str, doc: dict, ctype: str):
        body = json.dumps(doc, ensure_ascii=False).encode()
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    def _allowed(environ, what: str) -> str | None:
        """None when allowed, else the reason of the refusal (audited)."""
        reader = Reader(peer_subject(environ), environ.get("REMOTE_ADDR"))
        decision = may_read(access, reader, what)
        if decision.allowed:
            return None
        if auditor is not None:
            uri = environ.get("PATH_INFO", "")
            reason = decision.reason
            auditor.submit(lambda: ev.audit_log_used(reader.subject, reader.address, uri,
                                                     ev.OUTCOME_SERIOUS, f"refused: {reason}"))
        return decision.reason

    def _search(environ, fhir: bool):
        params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=False)
        q = query_from_params(params, fhir)
        with read_transaction(engine) as conn:
            return run_query(conn, q)

    def history_json(environ, start_response):
        from urllib.parse import unquote

        ctype = "application/json"
        patient = unquote(environ["PATH_INFO"][len(HISTORY_PREFIX):-len(HISTORY_SUFFIX)])
        refused = _allowed(environ, HISTORY)
        if refused:
            return _answer(start_response, "403 Forbidden", {"error": refused}, ctype)
        if not patient.strip():
            return _answer(start_response, "400 Bad Request", {"error": "no patient"}, ctype)
        params = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        try:
            limit = int(params.get("limit", 1000))
        except ValueError:
            return _answer(start_response, "400 Bad Request", {"error": "bad limit"}, ctype)
        with read_transaction(engine) as conn:
            found = patient_history(conn, patient, limit, own_source)
        return _answer(start_response, "200 OK",
                       {"patient": patient, "count": len(found),
                        "accesses": [a.to_json() for a in found]}, ctype)

    def audit_json(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.startswith(HISTORY_PREFIX) \
                and path.endswith(HISTORY_SUFFIX):
            return history_json(environ, start_response)
        if environ.get("REQUEST_METHOD") != "GET" or path not in ("/audit", "/audit/"):
            return _answer(start_response, "404 Not Found", {"error": "not found"}, "application/json")
        refused = _allowed(environ, TRAIL)
        if refused:
            return _answer(start_response, "403 Forbidden", {"error": refused}, "application/json")
        try:
            items = _search(environ, fhir=False)
        except BadRequest as exc:
            return _answer(start_response, "400 Bad Request", {"error": str(exc)}, "application/json")
        return _answer(start_response, "200 OK",
                       {"count": len(items), "events": [to_json(i) for i in items]},
                       "application/json")

    def fhir_audit_event(environ, start_response):
        ctype = "application/fhir+json; charset=utf-8"
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or path.rstrip("/") != "/fhir/AuditEvent":
            return _answer(start_response, "404 Not Found", _outcome("not-found", "not found"), ctype)
        refused = _allowed(environ, TRAIL)
        if refused:
            return _answer(start_response, "403 Forbidden", _outcome("forbidden", refused), ctype)
        try:
            items = _search(environ, fhir=True)
        except BadRequest as exc:
            return _answer(start_response, "400 Bad Request", _outcome("invalid", str(exc)), ctype)
        base = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', 'localhost')}/fhir"
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(items),
            "link": [{"relation": "self",
                      "url": f"{base}/AuditEvent?{environ.get('QUERY_STRING', '')}".rstrip("?")}],
            "entry": [{"fullUrl": f"{base}/AuditEvent/{i.pk}", "resource": to_fhir(i),
                       "search": {"mode": "match"}} for i in items],
        }
        return _answer(start_response, "200 OK", bundle, ctype)

    return {"/audit": audit_json, "/fhir/AuditEvent": fhir_audit_event}


def _outcome(code: str, text: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
