"""A patient's access history (Code de la santé publique, art. L. 1111-19: the holder of
a DMP may at any time read the traces of the accesses to it), read from the audit trail.

One entry per access to the patient's record, granted or refused, from the audit
messages OpenDMP itself emitted (``AuditSourceID`` ``OpenDMP@...``, or
``OPENDMP_AUDIT_SOURCE_ID``): the messages other actors send to the ARR describe the
same exchanges from the client side and would count them twice.

=================================  ====================  ==================================
audit message                      ``access``            note
=================================  ====================  ==================================
ITI-18 Query (110112)              ``consultation``      the registry was searched
ITI-43 Export (110106)             ``retrieval``         documents were read
ITI-41 / ITI-42 Import (110107)    ``submission``        one per submission set: the
                                                         registry's ITI-42 of a set our
                                                         repository submitted is the same
                                                         access
ITI-57 / ITI-62 (later)            ``update`` /          metadata update, removal
                                   ``deletion``
ITI-8 / ITI-44 (110110)            ``identity_update``   the patient's identity was fed,
                                                         updated or merged
ITI-9 / ITI-45 (110112)            ``identity_query``    the patient's identifiers looked up
Security Alert (110113)            ``refused``           a request naming the patient was
                                                         refused (XUA, access policy)
HTTP reads (110106, ``cda.web``)   ``reading``           health data read over plain HTTP,
                                                         granted or refused (403): the
                                                         transaction is ``document-html``
                                                         (``GET /documents/<uid>.html``)
                                                         or ``patient-summary``
                                                         (``GET /patients/<INS>/summary``)
=================================  ====================  ==================================

Not listed: ITI-42 as sent by our repository to its registry (the same submission),
ITI-10/ITI-46 notifications (OpenDMP informs subscribed systems of identity links: no one
accessed the record), application start/stop, audit-log reads.

Each entry says who (the person of the XUA assertion: id, name, roles; and the node: its
certificate subject or address; the plain-HTTP reads carry no assertion: the reading
node's certificate subject, else its address), when, how (the VIHF access mode —
``normal``, ``bris_de_glace``, ``centre_15`` — from the assertion's PurposeOfUse), what
(documents, submission set) and the result: ``granted``, ``refused`` (a refusal, or an
answer with errors) or ``failed`` (our internal error).
"""
from __future__ import annotations

from dataclasses import dataclass

from .events import DOCUMENT_HTML, PATIENT_SUMMARY
from .query import StoredAudit, iso

SOURCE_ROLE, DEST_ROLE = "110153", "110152"
_PIX_FEED, _PIX_QUERY = {"ITI-8", "ITI-44"}, {"ITI-9", "ITI-45"}
_KINDS = {"ITI-18": "consultation", "ITI-43": "retrieval", "ITI-41": "submission",
          "ITI-42": "submission", "ITI-57": "update", "ITI-62": "deletion",
          **{t: "identity_update" for t in _PIX_FEED},
          **{t: "identity_query" for t in _PIX_QUERY},
          DOCUMENT_HTML: "reading", PATIENT_SUMMARY: "reading"}


@dataclass(frozen=True)
class Access:
    time: int
    access: str
    transaction: str | None
    result: str
    outcome: int
    user: str | None
    user_name: str | None
    roles: tuple[str, ...]
    node: str | None
    access_mode: str | None
    documents: tuple[str, ...]
    submission_set: str | None
    description: str | None
    audit_id: int

    def to_json(self) -> dict:
        return {"time": iso(self.time), "access": self.access, "transaction": self.transaction,
                "result": self.result, "outcome": self.outcome,
                "who": {"user": self.user, "name": self.user_name, "roles": list(self.roles),
                        "node": self.node},
                "accessMode": self.access_mode, "documents": list(self.documents),
                "submissionSet": self.submission_set, "description": self.description,
                "auditEvent": self.audit_id}


def ours(source_id: str | None, own: str | None) -> bool:
    return bool(source_id) and (source_id == own or source_id.startswith("OpenDMP@"))


def _who(rec) -> tuple[str | None, str | None, tuple[str, ...], str | None]:
    """(user, user name, roles, node) of the requesting side: the person of the XUA
    assertion (a requestor without Source/Destination role) when there is one, else the
    requesting node's user id (wsa:ReplyTo, MSH-3|MSH-4); the node is its certificate
    subject, else its address. In a Security Alert, the refused peer."""
    def roles(p) -> set[str]:
        return {r.code for r in p.roles}

    if rec.event_id.code == "110113":
        peer = next((p for p in rec.participants if not p.is_requestor), None)
        return None, None, (), (peer.user_id if peer else None)
    person = next((p for p in rec.participants
                   if p.is_requestor and not roles(p) & {SOURCE_ROLE, DEST_ROLE}), None)
    node = next((p for p in rec.participants
                 if p.is_requestor and roles(p) & {SOURCE_ROLE, DEST_ROLE}), None) \
        or next((p for p in rec.participants if SOURCE_ROLE in roles(p)), None)
    node_name = (node.user_name or node.network_access_point or node.user_id) if node else None
    if person is not None:
        return (person.user_id, person.user_name,
                tuple(r.display or r.code for r in person.roles), node_name)
    return (node.user_id if node else None), None, (), node_name


def accesses(items: list[StoredAudit], own_source: str | None = None) -> list[Access]:
    """The access history in ``items`` (audit records naming the patient, newest first)."""
    out: list[Access] = []
    submissions: dict[str, int] = {}
    for item in items:
        rec = item.record
        if not ours(rec.source_id, own_source):
            continue
        tx = rec.event_types[0].code if rec.event_types else None
        if rec.event_id.code == "110113":
            kind = "refused"
        else:
            kind = _KINDS.get(tx or "")
            if kind is None:
                continue
            # our repository's ITI-42 to its registry (110106 Export) is not an access
            if tx == "ITI-42" and rec.event_id.code == "110106":
                continue
            if tx in ("ITI-10", "ITI-46"):
                continue
        if kind == "refused" or rec.outcome >= 8:
            result = "failed" if rec.outcome >= 12 else "refused"
        else:
            result = "granted"
        ss = rec.submission_set_ids[0] if rec.submission_set_ids else None
        user, name, roles, node = _who(rec)
        entry = Access(rec.event_time, kind, tx if kind != "refused" else _refused_tx(rec),
                       result, rec.outcome, user, name, roles, node,
                       rec.purposes[0].code if rec.purposes else None,
                       tuple(rec.document_ids), ss, _description(rec), item.pk)
        if kind == "submission" and ss:
            seen = submissions.get(ss)
            if seen is not None:
                # one submission set, one access: keep the repository's ITI-41 (the
                # request as the submitter made it) over the registry's ITI-42
                if out[seen].transaction == "ITI-42" and tx == "ITI-41":
                    out[seen] = entry
                continue
            submissions[ss] = len(out)
        out.append(entry)
    return out


def _refused_tx(rec) -> str | None:
    """The transaction a Security Alert's description names (``XUA: <wsa:Action>: ...``)."""
    text = rec.outcome_description or ""
    for action, tx in (("RegistryStoredQuery", "ITI-18"), ("RetrieveDocumentSet", "ITI-43"),
                       ("ProvideAndRegisterDocumentSet", "ITI-41"),
                       ("RegisterDocumentSet", "ITI-42")):
        if action in text:
            return tx
    return None


def _description(rec) -> str | None:
    return rec.outcome_description if rec.outcome else None
