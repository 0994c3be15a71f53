"""The audit messages OpenDMP emits (DICOM PS3.15 A.5 as profiled by IHE ITI TF-2).

As in IPF, one strategy per transaction fills an :class:`AuditDataset` and one shared
builder (:func:`build`) turns it into the ``AuditMessage`` XML:

=========================  ==========  ======  =========================================
transaction, our role      EventID     Action  participant objects
=========================  ==========  ======  =========================================
ITI-18, Registry           110112      E       patient (0..1), query (base64 body)
ITI-42, Registry           110107      C       patient, submission set
ITI-41, Repository         110107      C       patient, submission set
ITI-42, Repository→Reg.    110106      R       patient, submission set (export side)
ITI-43, Repository         110106      R       documents (+ repository, home community)
HTTP read (cda.web)        110106      R       patient(s), document (rendered document)
ITI-8 / ITI-44, PIX Mgr.   110110      C/U/D   patient(s) + MSH-10 / message id (II)
ITI-9 / ITI-45, PIX Mgr.   110112      E       patient(s), query (QPD / queryByParameter)
ITI-10 / ITI-46, PIX Mgr.  110110      U       patient(s) + MSH-10 / message id (II)
application start/stop     110100      E       (110120 / 110121 event types)
security alert             110113      E       (110126 Node Authentication, 110127 ...)
=========================  ==========  ======  =========================================

Participants: Source (110153) and Destination (110152) with their network access points,
as ITI TF-2a §3.18.5.1, TF-2b §3.41.5.1, §3.42.5.1, §3.43.6.1 specify; the source's TLS
client certificate subject (ITI-19 node identity) is put in its ``UserName``. Outcomes:
0 success, 4 minor failure (PartialSuccess or a warning-level refusal), 8 serious failure
(the request was refused with errors or a SOAP fault), 12 major failure.
"""
from __future__ import annotations

import base64
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

OUTCOME_SUCCESS, OUTCOME_MINOR, OUTCOME_SERIOUS, OUTCOME_MAJOR = 0, 4, 8, 12

DCM = "DCM"
IHE_TX = "IHE Transactions"
RFC3881 = "RFC-3881"
SOURCE_ROLE = ("110153", DCM, "Source Role ID")
DEST_ROLE = ("110152", DCM, "Destination Role ID")
APPLICATION_ROLE = ("110150", DCM, "Application")
APPLICATION_LAUNCHER = ("110151", DCM, "Application Launcher")

ITI_NAMES = {
    "ITI-18": "Registry Stored Query",
    "ITI-41": "Provide and Register Document Set-b",
    "ITI-42": "Register Document Set-b",
    "ITI-43": "Retrieve Document Set",
    "ITI-8": "Patient Identity Feed",
    "ITI-9": "PIX Query",
    "ITI-10": "PIX Update Notification",
    "ITI-44": "Patient Identity Feed HL7 V3",
    "ITI-45": "PIXV3 Query",
    "ITI-46": "PIXV3 Update Notification",
}
PATIENT_RECORD = ("110110", DCM, "Patient Record")
QUERY = ("110112", DCM, "Query")
SUBMISSION_SET_CLASS = ("urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", IHE_TX,
                        "submission set classificationNode")
ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
HOSTNAME = socket.gethostname()


@dataclass
class Participant:
    user_id: str
    requestor: bool
    role: tuple[str, str, str] | None = None
    alt_user_id: str | None = None
    user_name: str | None = None
    nap: str | None = None
    #: further RoleIDCodes (a human requestor's roles, XUA)
    more_roles: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def nap_type(self) -> str | None:
        if not self.nap:
            return None
        return "2" if _is_ip(self.nap) else "1"


@dataclass
class PObject:
    object_id: str
    type_code: str
    role: str
    id_type: tuple[str, str, str]
    query: bytes | None = None
    name: str | None = None
    details: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class AuditDataset:
    event_id: tuple[str, str, str]
    action: str
    event_type: tuple[str, str, str] | None
    outcome: int = OUTCOME_SUCCESS
    outcome_description: str | None = None
    participants: list[Participant] = field(default_factory=list)
    objects: list[PObject] = field(default_factory=list)
    source_id: str = f"OpenDMP@{HOSTNAME}"
    source_site: str | None = None
    when: datetime | None = None
    #: PurposeOfUse codes (the VIHF access mode: normal, bris_de_glace, centre_15)
    purposes: list[tuple[str, str, str]] = field(default_factory=list)


def _is_ip(value: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
        return True
    except (OSError, ValueError):
        return False


_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


#: what _attr must change (characters XML forbids or that need escaping in an attribute)
_ATTR_SPECIAL = re.compile('[\x00-\x1f&<>"\ufffe\uffff]')


def _attr(value: str) -> str:
    """An XML attribute value, quoted (string building: this runs for every transaction;
    most values need no escaping, which one regex search tells)."""
    if _ATTR_SPECIAL.search(value) is None:
        return '"' + value + '"'
    value = _INVALID_XML.sub("", value)
    return ('"' + value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")
            .replace("\r", "&#13;") + '"')


def _text(value: str) -> str:
    return _INVALID_XML.sub("", value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _coded(tag: str, code: tuple[str, str, str]) -> str:
    try:  # mostly the same few codes (EventID, roles, types) every time
        return _coded_cached(tag, code)
    except TypeError:  # a code given as a list: not hashable
        return _coded_element(tag, code)


def _coded_element(tag: str, code: tuple[str, str, str]) -> str:
    return (f"<{tag} csd-code={_attr(code[0])} codeSystemName={_attr(code[1])} "
            f"originalText={_attr(code[2])}/>")


_coded_cached = lru_cache(maxsize=1024)(_coded_element)


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode("ascii")


def build(ds: AuditDataset) -> bytes:
    """The ``AuditMessage`` XML (UTF-8, with declaration) for ``ds``."""
    when = (ds.when or datetime.now(timezone.utc)).isoformat(timespec="milliseconds")
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessage>',
           f"<EventIdentification EventActionCode={_attr(ds.action)} "
           f"EventDateTime={_attr(when.replace('+00:00', 'Z'))} "
           f'EventOutcomeIndicator="{int(ds.outcome)}">',
           _coded("EventID", ds.event_id)]
    if ds.event_type:
        out.append(_coded("EventTypeCode", ds.event_type))
    if ds.outcome_description:
        out.append(f"<EventOutcomeDescription>{_text(ds.outcome_description[:1024])}"
                   "</EventOutcomeDescription>")
    for purpose in ds.purposes:
        out.append(_coded("PurposeOfUse", purpose))
    out.append("</EventIdentification>")
    for p in ds.participants:
        attrs = f"UserID={_attr(_INVALID_XML.sub('', p.user_id or '') or 'unknown')}"
        if p.alt_user_id:
            attrs += f" AlternativeUserID={_attr(p.alt_user_id)}"
        if p.user_name:
            attrs += f" UserName={_attr(p.user_name)}"
        attrs += ' UserIsRequestor="true"' if p.requestor else ' UserIsRequestor="false"'
        if p.nap:
            attrs += f' NetworkAccessPointID={_attr(p.nap)} NetworkAccessPointTypeCode="{p.nap_type}"'
        roles = ([p.role] if p.role else []) + p.more_roles
        if roles:
            out.append(f"<ActiveParticipant {attrs}>"
                       + "".join(_coded("RoleIDCode", r) for r in roles) + "</ActiveParticipant>")
        else:
            out.append(f"<ActiveParticipant {attrs}/>")
    site = f"AuditEnterpriseSiteID={_attr(ds.source_site)} " if ds.source_site else ""
    out.append(f"<AuditSourceIdentification {site}AuditSourceID={_attr(ds.source_id)}>"
               '<AuditSourceTypeCode csd-code="4" codeSystemName="DCM" originalText="Application Server"/>'
               "</AuditSourceIdentification>")
    for o in ds.objects:
        out.append(f"<ParticipantObjectIdentification ParticipantObjectID={_attr(o.object_id)} "
                   f"ParticipantObjectTypeCode={_attr(o.type_code)} "
                   f"ParticipantObjectTypeCodeRole={_attr(o.role)}>")
        out.append(_coded("ParticipantObjectIDTypeCode", o.id_type))
        if o.query is not None:
            out.append(f"<ParticipantObjectQuery>{_b64(o.query)}</ParticipantObjectQuery>")
        elif o.name:
            out.append(f"<ParticipantObjectName>{_text(o.name)}</ParticipantObjectName>")
        for dtype, value in o.details:
            out.append(f"<ParticipantObjectDetail type={_attr(dtype)} value=\"{_b64(value)}\"/>")
        out.append("</ParticipantObjectIdentification>")
    out.append("</AuditMessage>")
    return "".join(out).encode("utf-8")


# ------------------------------------------------------------------------ building blocks
@dataclass
class Exchange:
    """The facts of one SOAP exchange an audit strategy needs."""

    #: the requesting node: wsa:ReplyTo address (or anonymous), IP, TLS subject
    client_reply_to: str | None
    client_address: str | None
    client_subject: str | None
    #: our endpoint URL and host
    endpoint_url: str
    server_host: str


@dataclass(frozen=True)
class Human:
    """The person on whose behalf a request is made (XUA identity, ITI TF-2b §3.40.4.2:
    a Human Requestor ActiveParticipant with the user's id, name and roles, and the
    PurposeOfUse in EventIdentification)."""

    user_id: str
    user_name: str | None = None
    roles: tuple[tuple[str, str, str], ...] = ()
    purpose: tuple[str, str, str] | None = None
    #: the patient the assertion names (VIHF resource-id), a CX
    patient_id: str | None = None


def with_human(ds: AuditDataset, human: Human | None) -> AuditDataset:
    """``ds`` with the Human Requestor, its PurposeOfUse and the patient its assertion
    names (when the dataset does not name that patient already)."""
    if human is None:
        return ds
    roles = list(human.roles)
    ds.participants.insert(0, Participant(human.user_id, True, roles[0] if roles else None,
                                          user_name=human.user_name, more_roles=roles[1:]))
    if human.purpose:
        ds.purposes.append(human.purpose)
    if human.patient_id and human.patient_id not in {o.object_id for o in ds.objects
                                                      if o.type_code == "1"}:
        ds.objects.insert(0, patient_object(human.patient_id))
    return ds


def _source_client(x: Exchange) -> Participant:
    return Participant(user_id=x.client_reply_to or ANONYMOUS, requestor=True, role=SOURCE_ROLE,
                       user_name=x.client_subject, nap=x.client_address)


def _dest_server(x: Exchange) -> Participant:
    return Participant(user_id=x.endpoint_url, requestor=False, role=DEST_ROLE,
                       alt_user_id=str(os.getpid()), nap=x.server_host)


def patient_object(patient_id: str) -> PObject:
    return PObject(patient_id, "1", "1", ("2", RFC3881, "Patient Number"))


def submission_set_object(unique_id: str) -> PObject:
    return PObject(unique_id, "2", "20", SUBMISSION_SET_CLASS)


def _event_type(tx: str) -> tuple[str, str, str]:
    return (tx, IHE_TX, ITI_NAMES.get(tx, tx))


# ------------------------------------------------------------------------ one per transaction
def iti18_registry(x: Exchange, outcome: int, query_body: bytes, query_id: str,
                   patient_id: str | None, home_community_id: str | None = None,
                   description: str | None = None) -> AuditDataset:
    """ITI TF-2a §3.18.5.1.2: the Document Registry's audit of a stored query."""
    details = [("QueryEncoding", "UTF-8")]
    if home_community_id:
        details.append(("urn:ihe:iti:xca:2010:homeCommunityId", home_community_id))
    objects = [patient_object(patient_id)] if patient_id else []
    objects.append(PObject(query_id or "unknown", "2", "24", _event_type("ITI-18"),
                           query=query_body, details=details))
    return AuditDataset(("110112", DCM, "Query"), "E", _event_type("ITI-18"), outcome, description,
                        [_source_client(x), _dest_server(x)], objects)


def import_event(tx: str, x: Exchange, outcome: int, patient_id: str | None,
                 submission_set_id: str | None, description: str | None = None) -> AuditDataset:
    """ITI-42 at the Registry (TF-2b §3.42.5.1.2), ITI-41 at the Repository (§3.41.5.1.2)."""
    objects = []
    if patient_id:
        objects.append(patient_object(patient_id))
    if submission_set_id:
        objects.append(submission_set_object(submission_set_id))
    return AuditDataset(("110107", DCM, "Import"), "C", _event_type(tx), outcome, description,
                        [_source_client(x), _dest_server(x)], objects)


def iti42_export(registry_url: str, outcome: int, patient_id: str | None,
                 submission_set_id: str | None, description: str | None = None) -> AuditDataset:
    """ITI-42 at the Document Repository acting as its source (TF-2b §3.42.5.1.1)."""
    from urllib.parse import urlsplit

    objects = []
    if patient_id:
        objects.append(patient_object(patient_id))
    if submission_set_id:
        objects.append(submission_set_object(submission_set_id))
    return AuditDataset(
        ("110106", DCM, "Export"), "R", _event_type("ITI-42"), outcome, description,
        [Participant(ANONYMOUS, True, SOURCE_ROLE, alt_user_id=str(os.getpid()), nap=HOSTNAME),
         Participant(registry_url, False, DEST_ROLE, nap=urlsplit(registry_url).hostname)],
        objects)


def iti43_repository(x: Exchange, outcome: int, documents: list[tuple[str, str, str | None]],
                     description: str | None = None) -> AuditDataset:
    """ITI TF-2b §3.43.6.1.2: the Document Repository's audit of a retrieve (export).

    ``documents`` are (document uniqueId, repository uniqueId, homeCommunityId) triples."""
    source = Participant(x.endpoint_url, False, SOURCE_ROLE, alt_user_id=str(os.getpid()),
                         nap=x.server_host)
    dest = Participant(x.client_reply_to or ANONYMOUS, True, DEST_ROLE,
                       user_name=x.client_subject, nap=x.client_address)
    objects = []
    for doc_id, repo_id, home in documents:
        details = [("Repository Unique Id", repo_id)]
        if home:
            details.append(("ihe:homeCommunityID", home))
        objects.append(PObject(doc_id, "2", "3", ("9", RFC3881, "Report Number"), details=details))
    return AuditDataset(("110106", DCM, "Export"), "R", _event_type("ITI-43"), outcome, description,
                        [source, dest], objects)


def application_activity(start: bool, application: str = "opendmp",
                         launcher: str | None = None) -> AuditDataset:
    """DICOM PS3.15 A.5.3.1 Application Activity: 110120 start / 110121 stop."""
    participants = [Participant(application, False, APPLICATION_ROLE, alt_user_id=str(os.getpid()),
                                nap=HOSTNAME)]
    if launcher:
        participants.append(Participant(launcher, True, APPLICATION_LAUNCHER))
    event_type = ("110120", DCM, "Application Start") if start else ("110121", DCM, "Application Stop")
    return AuditDataset(("110100", DCM, "Application Activity"), "E", event_type, OUTCOME_SUCCESS,
                        None, participants)


def security_alert(alert_type: tuple[str, str, str], reporter: str, description: str,
                   peer_address: str | None = None, outcome: int = OUTCOME_MINOR,
                   patients: list[str] = (), peer_user: str | None = None) -> AuditDataset:
    """DICOM PS3.15 A.5.3.11 Security Alert; e.g. 110126 Node Authentication for a refused
    TLS handshake. The reporting node is the requestor; the offending peer is a participant
    (``peer_user``: its certificate subject or user, else its address). A refused request
    that names patients (XUA) lists them as ParticipantObjects (A.5.3.11: "Alert Subject"),
    so that the refusal shows in each patient's access history."""
    participants = [Participant(reporter, True, None, alt_user_id=str(os.getpid()), nap=HOSTNAME)]
    if peer_address or peer_user:
        participants.append(Participant(peer_user or peer_address, False, None, nap=peer_address))
    return AuditDataset(("110113", DCM, "Security Alert"), "E", alert_type, outcome, description,
                        participants, [patient_object(p) for p in dict.fromkeys(patients)])


def audit_log_used(reader_subject: str | None, reader_address: str | None, uri: str,
                   outcome: int, description: str | None = None) -> AuditDataset:
    """DICOM PS3.15 A.5.3.2 Audit Log Used (110101, R): a read of the audit trail (here:
    a refused one). The reader is the requestor; the log, by its URI, the object
    (type 2, role 13 Security Resource, id type 12 URI)."""
    reader = Participant(reader_subject or reader_address or "unknown", True, None,
                         nap=reader_address)
    return AuditDataset(("110101", DCM, "Audit Log Used"), "R", None, outcome, description,
                        [reader], [PObject(uri, "2", "13", ("12", RFC3881, "URI"))])


NODE_AUTHENTICATION = ("110126", DCM, "Node Authentication")


# ------------------------------------------------------------------------ health data over HTTP
#: EventTypeCodes of the plain-HTTP reads of health data (:mod:`cda.web`). No IHE
#: transaction describes them: the codes are ours, the code system names the routes.
HTTP_READ = "urn:opendmp:http-read"
DOCUMENT_HTML = "document-html"
PATIENT_SUMMARY = "patient-summary"
HTTP_READ_TYPES = {
    DOCUMENT_HTML: (DOCUMENT_HTML, HTTP_READ, "Rendered document (GET /documents/<uniqueId>.html)"),
    PATIENT_SUMMARY: (PATIENT_SUMMARY, HTTP_READ, "Patient summary (GET /patients/<INS>/summary)"),
}
EXPORT = ("110106", DCM, "Export")


def document_object(unique_id: str) -> PObject:
    """A document by its uniqueId: System Object (2), Report (3), Report Number (9), as
    ITI TF-2b §3.43.6.1.2 names retrieved documents."""
    return PObject(unique_id, "2", "3", ("9", RFC3881, "Report Number"))


def health_data_read(route: str, url: str, reader_subject: str | None,
                     reader_address: str | None, outcome: int, patients: list[str] = (),
                     document: str | None = None,
                     description: str | None = None) -> AuditDataset:
    """A read of health data over plain HTTP (:mod:`cda.web`: a stored CDA rendered as
    HTML, a patient's summary), granted or refused, audited as the node that serves it.

    Export (110106, ``R``), as IHE audits a document served to the node that asked for
    it: the Document Repository's ITI-43 (ITI TF-2b §3.43.6.1.2) and, over plain HTTP,
    the Document Responder's ITI-68 (MHD, "Audit Event for Retrieve Document", Export R
    with the patient and the document uniqueId). The health data leaves this node for the
    reader's (DICOM PS3.15 A.5.3.4 Data Export: data leaving the control of the system's
    security domain; as for ITI-43 the network destination is the Destination participant,
    with no Destination Media). Patient Record (110110, A.5.3.14) is what IHE uses for
    changes to a patient's identity (ITI-8/44, here the access history's
    ``identity_update``), not for clinical content served to another node.

    Participants: this node as Source (110153; ``url`` is the request URL), the reader
    as Destination (110152) and requestor: its TLS client certificate subject (also its
    ``UserName``), else its address. Objects: the patient(s) (type 1, role 1, Patient
    Number) and the document (:func:`document_object`); an unknown document names no
    patient."""
    source = Participant(url, False, SOURCE_ROLE, alt_user_id=str(os.getpid()), nap=HOSTNAME)
    reader = Participant(reader_subject or reader_address or "unknown", True, DEST_ROLE,
                         user_name=reader_subject, nap=reader_address)
    objects = [patient_object(p) for p in dict.fromkeys(patients)]
    if document:
        objects.append(document_object(document))
    return AuditDataset(EXPORT, "R", HTTP_READ_TYPES[route], outcome, description,
                        [source, reader], objects)


# ------------------------------------------------------------------------ PIX Manager
def _patient_with(cx: str, detail_type: str, message_id: str) -> PObject:
    """A patient ParticipantObject with the message's id as ParticipantObjectDetail
    (``MSH-10`` for HL7 v2, ``II`` for HL7 v3: ITI TF-2a §3.8.5.1, TF-2b §3.44.5.1)."""
    obj = patient_object(cx)
    if message_id:
        obj.details.append((detail_type, message_id))
    return obj


def patient_record(tx: str, action: str, x: Exchange, outcome: int, patients: list[str],
                   detail_type: str, message_id: str,
                   description: str | None = None) -> AuditDataset:
    """ITI-8 (TF-2a §3.8.5.1.2) and ITI-44 (TF-2b §3.44.5.1.2) at the PIX Manager:
    Patient Record, C for an add (A01/A04/A05/A28, PRPA_IN201301UV02), U for an update
    (A08/A31, PRPA_IN201302UV02) and for the survivor of a merge, D for the identifier a
    merge subsumes (A40, PRPA_IN201304UV02). Source: the Patient Identity Source
    (MSH-3|MSH-4, or wsa:ReplyTo), Destination: the PIX Manager (MSH-5|MSH-6, or our
    endpoint)."""
    return AuditDataset(PATIENT_RECORD, action, _event_type(tx), outcome, description,
                        [_source_client(x), _dest_server(x)],
                        [_patient_with(p, detail_type, message_id) for p in patients])


def pix_query(tx: str, x: Exchange, outcome: int, patients: list[str], query: bytes,
              detail_type: str, message_id: str,
              description: str | None = None) -> AuditDataset:
    """ITI-9 (TF-2a §3.9.5.1.2) and ITI-45 (TF-2b §3.45.5.1.2) at the PIX Manager: Query
    (110112, E); patients: the queried identifier and those returned; the query object
    carries the QPD segment (ITI-9) or the queryByParameter element (ITI-45), base64."""
    objects = [_patient_with(p, detail_type, message_id) for p in patients]
    objects.append(PObject(message_id or "unknown", "2", "24", _event_type(tx), query=query,
                           details=[(detail_type, message_id)] if message_id else []))
    return AuditDataset(QUERY, "E", _event_type(tx), outcome, description,
                        [_source_client(x), _dest_server(x)], objects)


def pix_notification(tx: str, consumer_user: str, consumer_host: str | None, source_user: str,
                     outcome: int, patients: list[str], detail_type: str, message_id: str,
                     description: str | None = None) -> AuditDataset:
    """ITI-10 (TF-2a §3.10.5.1.1) and ITI-46 (TF-2b §3.46.5.1.1), the PIX Manager as the
    source of the export: Patient Record, U; Source: us (MSH-3|MSH-4 of our message, or
    our device), Destination: the consumer (MSH-5|MSH-6, or its endpoint URL)."""
    return AuditDataset(
        PATIENT_RECORD, "U", _event_type(tx), outcome, description,
        [Participant(source_user, True, SOURCE_ROLE, alt_user_id=str(os.getpid()), nap=HOSTNAME),
         Participant(consumer_user, False, DEST_ROLE, nap=consumer_host)],
        [_patient_with(p, detail_type, message_id) for p in patients])
SECURITY_CONFIGURATION = ("110128", DCM, "Network Configuration")
