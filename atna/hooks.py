"""Auditing as a cross-cutting step: wrap the SOAP operations of the registry and the
repository (and the repository's remote-registry gateway) so that every exchange emits
its audit message, success or failure, without the actors knowing about ATNA.

``audit_endpoint(endpoint, auditor)`` returns the endpoint with each operation's handler
wrapped by the strategy of its ``wsa:Action``; a SOAP fault or an exception is audited as
a serious failure and re-raised unchanged.
"""
from __future__ import annotations

import logging
import re
import socket
from dataclasses import replace
from typing import Callable

from lxml import etree

from soapstack.envelope import SoapFault, SoapRequest, SoapResponse
from soapstack.namespaces import RIM, WSA, XDSB
from soapstack.wsgi import Operation, SoapEndpoint

from . import events as ev
from .auditor import Auditor
from .pixaudit import V3_STRATEGIES

log = logging.getLogger("opendmp.atna")

ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"

SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
PATIENT_PARAMS = ("$XDSDocumentEntryPatientId", "$XDSSubmissionSetPatientId",
                  "$XDSFolderPatientId", "$patientId")
_STATUS = re.compile(rb'ResponseStatusType:(Success|PartialSuccess|Failure)')
HOST = socket.gethostname()


def _outcome_of(body: bytes | None) -> tuple[int, str | None]:
    """Outcome from the RegistryResponse/AdhocQueryResponse status in the first bytes."""
    if not body:
        return ev.OUTCOME_SUCCESS, None
    m = _STATUS.search(body[:4096])
    status = m.group(1).decode() if m else "Success"
    if status == "Success":
        return ev.OUTCOME_SUCCESS, None
    codes = sorted(set(re.findall(rb'errorCode="([^"]+)"', body[:65536])))
    text = f"{status}: " + ", ".join(c.decode("utf-8", "replace") for c in codes)
    return (ev.OUTCOME_MINOR if status == "PartialSuccess" else ev.OUTCOME_SERIOUS), text


def _reply_to(request: SoapRequest) -> str | None:
    if request.header is None:
        return None
    address = request.header.find(f"{{{WSA}}}ReplyTo/{{{WSA}}}Address")
    return address.text.strip() if address is not None and address.text else None


def submission_facts(payload: etree._Element) -> tuple[str | None, str | None]:
    """(patient id, submission set uniqueId) of a SubmitObjectsRequest (or a PnR request)."""
    patient = unique = None
    for ext in payload.iter(f"{{{RIM}}}ExternalIdentifier"):
        scheme = ext.get("identificationScheme")
        if scheme == SS_PATIENT_ID and patient is None:
            patient = ext.get("value")
        elif scheme == SS_UNIQUE_ID and unique is None:
            unique = ext.get("value")
    return patient, unique


def query_facts(payload: etree._Element) -> tuple[str, str | None, str | None]:
    """(stored query id, patient id, homeCommunityId) of an AdhocQueryRequest."""
    # iterchildren's tag filter runs in C; ElementPath (find/findall) in Python
    adhoc = next(payload.iterchildren(_ADHOC_QUERY), None)
    if adhoc is None:
        return "", None, None
    patient = None
    for slot in adhoc.iterchildren(_SLOT):
        if slot.get("name") in PATIENT_PARAMS:
            value_list = next(slot.iterchildren(_VALUE_LIST), None)
            first = next(value_list.iterchildren(_VALUE), None) if value_list is not None else None
            value = (first.text if first is not None else None) or ""
            value = value.strip().strip("()").strip().strip("'")
            if value:
                patient = value
                break
    return adhoc.get("id") or "", patient, adhoc.get("home")


_ADHOC_QUERY, _SLOT = f"{{{RIM}}}AdhocQuery", f"{{{RIM}}}Slot"
_VALUE_LIST, _VALUE = f"{{{RIM}}}ValueList", f"{{{RIM}}}Value"


def retrieve_facts(payload: etree._Element) -> list[tuple[str, str, str | None]]:
    out = []
    for dr in payload.findall(f"{{{XDSB}}}DocumentRequest"):
        out.append(((dr.findtext(f"{{{XDSB}}}DocumentUniqueId") or "").strip(),
                    (dr.findtext(f"{{{XDSB}}}RepositoryUniqueId") or "").strip(),
                    (dr.findtext(f"{{{XDSB}}}HomeCommunityId") or "").strip() or None))
    return out


def _body_bytes(response: SoapResponse) -> bytes | None:
    return response.body if isinstance(response.body, (bytes, bytearray)) else None


#: (request, exchange, outcome, description, response body) -> a function building the
#: dataset(s), which runs later in the auditor's background thread. The strategy copies
#: the facts it needs (plain strings and bytes) from the request in the request's thread:
#: the background thread never touches the request's lxml tree (reading it there stalled
#: the auditor thread under load: audit messages stopped reaching the spool).
Strategy = Callable[..., Callable[[], ev.AuditDataset | list[ev.AuditDataset]]]


def _iti18(request: SoapRequest, x: ev.Exchange, outcome: int, text: str | None, body=None):
    query_id, patient, home = query_facts(request.payload)
    query = etree.tostring(request.payload, encoding="UTF-8")
    return lambda: ev.iti18_registry(x, outcome, query, query_id, patient, home, text)


def _import(tx: str) -> Strategy:
    def strategy(request, x, outcome, text, body=None):
        patient, unique = submission_facts(request.payload)
        return lambda: ev.import_event(tx, x, outcome, patient, unique, text)
    return strategy


def _iti43(request, x, outcome, text, body=None):
    documents = retrieve_facts(request.payload)
    return lambda: ev.iti43_repository(x, outcome, documents, text)


STRATEGIES: dict[str, Strategy] = {
    ITI18: _iti18,
    ITI42: _import("ITI-42"),
    ITI41: _import("ITI-41"),
    ITI43: _iti43,
    **V3_STRATEGIES,  # ITI-44, ITI-45 at the PIX Manager (atna.pixaudit)
}
#: outcomes read from an ebRS RegistryResponse; the HL7 v3 strategies read their ack
_EBRS = frozenset({ITI18, ITI42, ITI41, ITI43})


def _wrap(op: Operation, strategy: Strategy, auditor: Auditor, path: str) -> Operation:
    handler = op.handler
    ebrs = op.action in _EBRS

    def audited(request: SoapRequest) -> SoapResponse:
        try:
            response = handler(request)
        except SoapFault as fault:
            _emit(request, strategy, auditor, path, ev.OUTCOME_SERIOUS,
                  f"SOAP fault: {fault.reason}", None, fault)
            raise
        except Exception as exc:
            _emit(request, strategy, auditor, path, ev.OUTCOME_MAJOR,
                  f"internal error: {type(exc).__name__}", None, exc)
            raise
        body = _body_bytes(response)
        outcome, text = _outcome_of(body) if ebrs else (ev.OUTCOME_SUCCESS, None)
        _emit(request, strategy, auditor, path, outcome, text, body)
        return response

    return replace(op, handler=audited)


def human_of(request: SoapRequest) -> ev.Human | None:
    """The Human Requestor of a request: its verified XUA identity
    (:class:`xua.identity.IdentityContext`), None without one."""
    identity = getattr(request, "identity", None)
    if identity is None:
        return None
    roles = tuple((r.code, r.system, r.display or r.code) for r in
                  (getattr(identity, "roles", ()) or ()))
    mode = getattr(identity, "access_mode", None)
    return ev.Human(identity.subject_id, getattr(identity, "name", None), roles,
                    (mode.code, mode.system, mode.display or mode.code) if mode else None,
                    getattr(identity, "patient_id", None))


def _emit(request: SoapRequest, strategy: Strategy, auditor: Auditor, path: str, outcome: int,
          text: str | None, body: bytes | None = None,
          refused: BaseException | None = None) -> None:
    try:
        x = ev.Exchange(client_reply_to=_reply_to(request), client_address=request.remote_addr,
                        client_subject=request.peer_subject,
                        endpoint_url=request.to or path,
                        server_host=HOST)
        build = strategy(request, x, outcome, text, body)
        human = human_of(request)
        # a refusal by the access policy names the patient(s) whose record was asked for
        extra = [str(p) for p in (getattr(refused, "patient_ids", ()) or ())]
        if human is None and not extra:
            auditor.submit(build)
            return

        def with_identity():
            made = build()
            out = []
            for ds in made if isinstance(made, list) else [made]:
                ds = ev.with_human(ds, human)
                named = {o.object_id for o in ds.objects if o.type_code == "1"}
                ds.objects[:0] = [ev.patient_object(p) for p in extra if p not in named]
                out.append(ds)
            return out

        auditor.submit(with_identity)
    except Exception:  # noqa: BLE001 - never break the transaction
        log.exception("could not build the audit message of %s", request.action)


def refusal(request: SoapRequest, reason: str, patients: list[str] = ()) -> Callable[[], ev.AuditDataset]:
    """The Security Alert of a refused request (XUA: the assertion was not accepted):
    the patients the request names (stored query patient, submission set patient) and
    the one its assertion claims are its ParticipantObjects, so the refusal shows in each
    patient's access history. Built from facts copied now, in the request's thread."""
    named = list(patients)
    try:
        payload = request.payload
        if request.action == ITI18:
            patient = query_facts(payload)[1]
        elif request.action in (ITI41, ITI42):
            patient = submission_facts(payload)[0]
        else:
            patient = None
        if patient:
            named.append(patient)
    except Exception:  # noqa: BLE001 - an empty or odd Body: no patient named
        pass
    claimed = claimed_patient(request)
    if claimed:
        named.append(claimed)
    peer, subject = request.remote_addr, request.peer_subject
    text = f"XUA: {request.action}: {reason}"
    return lambda: ev.security_alert(ev.NODE_AUTHENTICATION, "opendmp", text, peer_address=peer,
                                     outcome=ev.OUTCOME_SERIOUS, patients=named,
                                     peer_user=subject)


_RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
_SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"


def claimed_patient(request: SoapRequest) -> str | None:
    """The patient (VIHF ``resource-id``) a refused request's assertion claims to be
    about — not verified (it was refused), used only to index the refusal."""
    if request.header is None:
        return None
    for attr in request.header.iter(f"{{{_SAML2}}}Attribute"):
        if attr.get("Name") == _RESOURCE_ID:
            value = attr.find(f"{{{_SAML2}}}AttributeValue")
            text = "".join(value.itertext()).strip() if value is not None else ""
            return text[:256] or None
    return None


def audit_endpoint(endpoint: SoapEndpoint, auditor: Auditor) -> SoapEndpoint:
    """``endpoint`` with every operation we have a strategy for audited."""
    if not auditor.enabled:
        return endpoint
    ops = [_wrap(op, STRATEGIES[op.action], auditor, endpoint.path) if op.action in STRATEGIES else op
           for op in endpoint.operations]
    return SoapEndpoint(endpoint.path, ops, wsdl=endpoint.wsdl)


class AuditedRegistryGateway:
    """The repository's remote-registry gateway, auditing ITI-42 as its source (export)."""

    def __init__(self, inner, registry_url: str, auditor: Auditor) -> None:
        self.inner = inner
        self.registry_url = registry_url
        self.auditor = auditor

    def register(self, sub, unique_ids):
        from registry.errors import XdsErrors

        ss = sub.submission_set
        patient = ss.patient_id if ss is not None else None
        unique = ss.unique_id if ss is not None else None
        try:
            warnings = self.inner.register(sub, unique_ids)
        except XdsErrors as exc:
            codes = ", ".join(sorted({e.code for e in exc.errors}))
            self.auditor.submit(lambda: ev.iti42_export(self.registry_url, ev.OUTCOME_SERIOUS,
                                                        patient, unique, f"Failure: {codes}"))
            raise
        except Exception as exc:
            name = type(exc).__name__
            self.auditor.submit(lambda: ev.iti42_export(self.registry_url, ev.OUTCOME_MAJOR, patient,
                                                        unique, f"internal error: {name}"))
            raise
        self.auditor.submit(lambda: ev.iti42_export(self.registry_url, ev.OUTCOME_SUCCESS,
                                                    patient, unique))
        return warnings

    def is_registered(self, unique_id: str) -> bool:
        return self.inner.is_registered(unique_id)



# ------------------------------------------------------------------ health data over HTTP
def http_outcome(status: int) -> int:
    """The EventOutcomeIndicator of a read answered with HTTP ``status``: 0 the data was
    served (2xx), 4 there was nothing to serve (404: unknown document, no summary), 12 our
    failure (5xx), 8 a refused or unreadable request (403 by the access policy, 400, 413,
    415)."""
    if 200 <= status < 300:
        return ev.OUTCOME_SUCCESS
    if status == 404:
        return ev.OUTCOME_MINOR
    return ev.OUTCOME_MAJOR if status >= 500 else ev.OUTCOME_SERIOUS


def health_data_reads(auditor: Auditor) -> Callable[..., None] | None:
    """The ``audit`` callback of :func:`cda.web.routes`: every answer of the plain-HTTP
    health-data routes, granted or refused, becomes :func:`atna.events.health_data_read`
    (the facts copied now, in the request's thread; the message built by the auditor's
    thread). None when ATNA has no destination: the routes then skip looking up whose
    data was asked for."""
    if not auditor.enabled:
        return None

    def audit(route: str, reader, url: str, status: str, message: str,
              patients, document: str | None) -> None:
        try:
            outcome = http_outcome(int(status.split(" ", 1)[0]))
            text = None if outcome == ev.OUTCOME_SUCCESS else f"{status}: {message}"
            subject, address, named = reader.subject, reader.address, list(patients)
            auditor.submit(lambda: ev.health_data_read(route, url, subject, address, outcome,
                                                       named, document, text))
        except Exception:  # noqa: BLE001 - never break the answer
            log.exception("could not audit the read of %s", url)

    return audit
