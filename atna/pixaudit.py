"""Auditing the PIX Manager as a cross-cutting step (as :mod:`atna.hooks` does for XDS):
the actors in :mod:`pix` never build an audit message.

* HL7 v2 over MLLP — :func:`mllp_observer` is given to :class:`pix.mllp.MllpServer`,
  which calls it with each (message, answer, peer address, peer certificate subject):
  ITI-8 (ADT A01/A04/A05/A28 create, A08/A31 update, A40 update of the survivor +
  delete of the subsumed identifier) and ITI-9 (QBP^Q23);
* HL7 v3 over SOAP — :data:`V3_STRATEGIES`, used by :func:`atna.hooks.audit_endpoint`
  on ``/pix/v3``: ITI-44 (PRPA_IN201301UV02 create, 201302 update, 201304 merge) and
  ITI-45 (PRPA_IN201309UV02);
* ITI-10 / ITI-46 — :func:`notification_audit`, given to :func:`pix.outbox.dispatch_due`,
  audits each delivery attempt with the PIX Manager as the source of the export.

The request thread (or event loop) only copies bytes; the messages are parsed and the
audit datasets built in the :class:`~atna.auditor.Auditor`'s background thread.

Outcome: acknowledgement AA/CA → 0; AE/AR (CE/CR) → 8 (the request was refused, its
ERR / acknowledgementDetail text in EventOutcomeDescription); ERR 207 (internal error)
→ 12; a notification the consumer could not be reached for → 8 ("will retry").
"""
from __future__ import annotations

import logging
import socket
from typing import Callable
from urllib.parse import urlsplit

from lxml import etree

from . import events as ev
from .auditor import Auditor

log = logging.getLogger("opendmp.atna")

V3 = "urn:hl7-org:v3"
NS = {"v3": V3}
HOST = socket.gethostname()

ADD_EVENTS = frozenset({"A01", "A04", "A05", "A28"})
UPDATE_EVENTS = frozenset({"A08", "A31"})
MERGE_EVENTS = frozenset({"A40"})


def _outcome(code: str, texts: list[str], internal: bool = False) -> tuple[int, str | None]:
    code = (code or "").upper()
    if code in ("AA", "CA"):
        return ev.OUTCOME_SUCCESS, None
    text = f"{code or 'no acknowledgement'}: " + "; ".join(t for t in texts if t)
    return (ev.OUTCOME_MAJOR if internal else ev.OUTCOME_SERIOUS), text.strip().rstrip(":")


# ------------------------------------------------------------------ HL7 v2 (MLLP)
def _cxs(m, raw: str) -> list[str]:
    """The CX repetitions of a field, as sent (trailing empty components dropped)."""
    sep = m.enc[0] if m.enc else "^"
    out = []
    for rep in m.reps(raw):
        rep = rep.rstrip(sep).strip()
        if rep and rep.strip(sep):
            out.append(rep)
    return out


def _err_texts(m) -> tuple[list[str], bool]:
    """The ERR texts of an acknowledgement (ERR-8 in v2.5, the ELD of ERR-1 in v2.3.1)
    and whether one is 207 (application internal error)."""
    texts, internal = [], False
    for seg in m.segments("ERR"):
        line = str(seg)
        internal = internal or "207" in m.comps(m.field("ERR", 3, seg=seg))[:1] \
            or "^207&" in line or "^207^" in line
        texts.append(m.text(m.field("ERR", 8, seg=seg)) or line[4:204])
    return texts, internal


def v2_datasets(request: bytes, answer: bytes, address: str | None,
                subject: str | None) -> list[ev.AuditDataset]:
    """The audit datasets of one HL7 v2 exchange at the PIX Manager (none when the
    message is not an ITI-8 / ITI-9 message, e.g. unreadable: there is no transaction)."""
    from pix.hl7v2.message import Inbound, MessageError, decode

    try:
        m = Inbound(decode(request)[0])
    except MessageError:
        return []
    code, event, _ = m.message_type
    event = event or m.comp(m.field("EVN", 1), 1).strip()
    try:
        a = Inbound(decode(answer)[0])
        ack_code = a.text(a.comps(a.field("MSA", 1))[0]).strip() if a.has("MSA") else ""
        texts, internal = _err_texts(a)
    except MessageError:
        a, ack_code, texts, internal = None, "", [], False
    outcome, text = _outcome(ack_code, texts, internal)
    x = ev.Exchange(client_reply_to=f"{m.comp(m.msh(3), 1)}|{m.comp(m.msh(4), 1)}",
                    client_address=address, client_subject=subject,
                    endpoint_url=f"{m.comp(m.msh(5), 1)}|{m.comp(m.msh(6), 1)}",
                    server_host=HOST)
    ctrl = m.control_id
    if code == "ADT" and (event in ADD_EVENTS or event in UPDATE_EVENTS):
        patients = [cx for pid in m.segments("PID")[:1] for cx in _cxs(m, m.field("PID", 3, seg=pid))]
        action = "C" if event in ADD_EVENTS else "U"
        return [ev.patient_record("ITI-8", action, x, outcome, patients, "MSH-10", ctrl, text)]
    if code == "ADT" and event in MERGE_EVENTS:
        survivors, subsumed = [], []
        for pid in m.segments("PID"):
            survivors += _cxs(m, m.field("PID", 3, seg=pid))
        for mrg in m.segments("MRG"):
            subsumed += _cxs(m, m.field("MRG", 1, seg=mrg))
        return [ev.patient_record("ITI-8", "D", x, outcome, subsumed, "MSH-10", ctrl, text),
                ev.patient_record("ITI-8", "U", x, outcome, survivors, "MSH-10", ctrl, text)]
    if code == "QBP" and event == "Q23":
        patients = _cxs(m, m.field("QPD", 3))[:1]
        if a is not None and outcome == ev.OUTCOME_SUCCESS:
            for pid in a.segments("PID")[:1]:
                patients += _cxs(a, a.field("PID", 3, seg=pid))
        qpd = m.segment_text("QPD") or ""
        return [ev.pix_query("ITI-9", x, outcome, list(dict.fromkeys(patients)),
                             qpd.encode("utf-8"), "MSH-10", ctrl, text)]
    return []


def mllp_observer(auditor: Auditor) -> Callable[[bytes, bytes, str | None, str | None], None]:
    """The observer :class:`pix.mllp.MllpServer` calls after each answer."""

    def observe(request: bytes, answer: bytes, address: str | None, subject: str | None) -> None:
        def build() -> list[ev.AuditDataset]:
            return v2_datasets(request, answer, address, subject)
        auditor.submit_many(build)

    return observe


# ------------------------------------------------------------------ HL7 v3 (SOAP)
def _ii_text(el) -> str:
    if el is None:
        return ""
    root, ext = (el.get("root") or "").strip(), (el.get("extension") or "").strip()
    return f"{root}^{ext}" if ext else root


def _ii_cx(el) -> str | None:
    """A patient II as a CX (``extension^^^&root&ISO``), as the XDS side writes them."""
    root, ext = (el.get("root") or "").strip(), (el.get("extension") or "").strip()
    if not ext:
        return None
    return f"{ext}^^^&{root}&ISO" if root else ext


def _ids(root: etree._Element, path: str) -> list[str]:
    return [cx for cx in (_ii_cx(e) for e in root.xpath(path, namespaces=NS)) if cx]


_PATIENT = "v3:controlActProcess/v3:subject/v3:registrationEvent/v3:subject1/v3:patient"
_PRIOR = ("v3:controlActProcess/v3:subject/v3:registrationEvent/v3:replacementOf/"
          "v3:priorRegistration/v3:subject1/v3:priorRegisteredRole/v3:id")


def _v3_ack(body: bytes | None) -> tuple[str, list[str], etree._Element | None]:
    if not body:
        return "", [], None
    from soapstack.xml import parse_xml

    try:
        root = parse_xml(body)
    except Exception:  # noqa: BLE001 - our own answer: unreadable means no ack to report
        return "", [], None
    tc = root.find(f"{{{V3}}}acknowledgement/{{{V3}}}typeCode")
    texts = ["".join(t.itertext()).strip() for t in
             root.iterfind(f"{{{V3}}}acknowledgement/{{{V3}}}acknowledgementDetail/{{{V3}}}text")]
    return (tc.get("code") or "") if tc is not None else "", texts, root


def _v3_strategy(tx: str):
    def strategy(request, x: ev.Exchange, outcome: int, text: str | None, body: bytes | None = None):
        payload = request.payload
        kind = etree.QName(payload).localname
        message_id = _ii_text(payload.find(f"{{{V3}}}id"))
        if tx == "ITI-45":
            qbp = payload.find(f"{{{V3}}}controlActProcess/{{{V3}}}queryByParameter")
            query = etree.tostring(qbp, encoding="UTF-8") if qbp is not None else b""
            queried = _ids(payload, "v3:controlActProcess/v3:queryByParameter/v3:parameterList/"
                           "v3:patientIdentifier/v3:value")
        else:
            survivors = _ids(payload, f"{_PATIENT}/v3:id") + \
                _ids(payload, f"{_PATIENT}/v3:patientPerson/v3:asOtherIDs/v3:id")
            subsumed = _ids(payload, _PRIOR)

        def build() -> list[ev.AuditDataset]:
            o, t = outcome, text
            code, texts, answer = _v3_ack(body)
            if o == ev.OUTCOME_SUCCESS:
                o, t = _outcome(code, texts)
            if tx == "ITI-45":
                patients = list(queried)
                if answer is not None and o == ev.OUTCOME_SUCCESS:
                    patients += _ids(answer, f"{_PATIENT}/v3:id")
                return [ev.pix_query(tx, x, o, list(dict.fromkeys(patients)), query, "II",
                                     message_id, t)]
            if kind == "PRPA_IN201304UV02":
                return [ev.patient_record(tx, "D", x, o, subsumed, "II", message_id, t),
                        ev.patient_record(tx, "U", x, o, survivors, "II", message_id, t)]
            action = "C" if kind == "PRPA_IN201301UV02" else "U"
            return [ev.patient_record(tx, action, x, o, survivors, "II", message_id, t)]

        return build

    strategy.many = True
    return strategy


V3_STRATEGIES = {
    "urn:hl7-org:v3:PRPA_IN201301UV02": _v3_strategy("ITI-44"),
    "urn:hl7-org:v3:PRPA_IN201302UV02": _v3_strategy("ITI-44"),
    "urn:hl7-org:v3:PRPA_IN201304UV02": _v3_strategy("ITI-44"),
    "urn:hl7-org:v3:PRPA_IN201309UV02": _v3_strategy("ITI-45"),
}


# ------------------------------------------------------------------ ITI-10 / ITI-46
def notification_datasets(consumer, message: bytes, ack: str | None,
                          error: str | None) -> list[ev.AuditDataset]:
    """The audit of one delivery attempt of an update notification to ``consumer``
    (a :class:`pix.config.Consumer`): ``ack`` is its acknowledgement code, ``error`` why
    it could not be reached (the attempt is retried)."""
    if ack is not None:
        outcome, text = _outcome(ack, [f"the consumer answered {ack}"])
    else:
        outcome, text = ev.OUTCOME_SERIOUS, f"not delivered ({error}); will retry"
    if consumer.url:
        from soapstack.xml import parse_xml

        root = parse_xml(message)
        patients = _ids(root, f"{_PATIENT}/v3:id")
        source = _ii_text(root.find(f"{{{V3}}}sender/{{{V3}}}device/{{{V3}}}id")) or ev.ANONYMOUS
        return [ev.pix_notification("ITI-46", consumer.url, urlsplit(consumer.url).hostname,
                                    source, outcome, patients, "II",
                                    _ii_text(root.find(f"{{{V3}}}id")), text)]
    from pix.hl7v2.message import Inbound, decode

    m = Inbound(decode(message)[0])
    patients = [cx for pid in m.segments("PID")[:1] for cx in _cxs(m, m.field("PID", 3, seg=pid))]
    return [ev.pix_notification(
        "ITI-10", f"{m.comp(m.msh(5), 1)}|{m.comp(m.msh(6), 1)}", consumer.host,
        f"{m.comp(m.msh(3), 1)}|{m.comp(m.msh(4), 1)}", outcome, patients, "MSH-10",
        m.control_id, text)]


def notification_audit(auditor: Auditor):
    """The ``audit`` callback of :func:`pix.outbox.dispatch_due`."""

    def audit(consumer, message: bytes, ack: str | None, error: str | None) -> None:
        auditor.submit_many(lambda: notification_datasets(consumer, message, ack, error))

    return audit
