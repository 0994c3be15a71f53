"""Access policy: who may see what. Every read path goes through this module.

The XUA step (:mod:`xua.config`) attaches the verified identity context
(:class:`xua.identity.IdentityContext`) to the request; actors hand it here with what
they are about to disclose. Today's rule is the one the DMP's VIHF carries: an assertion
that names a patient (``urn:oasis:names:tc:xacml:2.0:resource:resource-id``, IHE ITI TF-2b
§3.40.4.1.2, the VIHF's INS) authorizes that patient only.

* :func:`require_patient` — a request that names its patient (ITI-18 patient parameter,
  ITI-41/42 SubmissionSet patientId): checked by the XUA step before any actor runs.
* :func:`require_registry_objects` — ITI-18 queries that name no patient (GetDocuments,
  GetFolders, GetSubmissionSetAndContents, GetAssociations... by UUID or uniqueId): the
  objects about to be returned must all be the assertion's patient's.
* :func:`require_documents` — ITI-43: every requested document the repository holds must
  be the assertion's patient's (by the registry's DocumentEntry, else by the patient the
  repository's index recorded at ITI-41).

A refusal is a :class:`~soapstack.wssecurity.SecurityFault` with subcode
``wsse:FailedAuthentication``, the fault the X-Service Provider answers when the assertion
does not authorize the request (ITI TF-2b §3.40.4.2); the SOAP layer
(:class:`soapstack.wsgi.SoapApplication`) emits the ATNA security alert for it exactly as
for refusals of the XUA step, and the transaction's own audit records the failure. The
reason never names the other patient: what would be disclosed is what is refused.

Why the whole ITI-43 request is refused rather than answering ``XDSDocumentUniqueIdError``
for the other patient's documents: the assertion is scoped to one patient, so a request
that reaches another patient's document is outside what the assertion authorizes and,
as for every XUA refusal, nothing of it is processed (ITI TF-2b §3.40.4.2; issue #7:
"nothing of the request is processed"). ``XDSDocumentUniqueIdError`` (ITI TF-2b
§3.43.4.2.3) means "this repository does not hold the document", which would be false,
and a PartialSuccess would serve part of an out-of-scope request. The same holds for
ITI-18: a query that would return another patient's objects is refused whole.

No identity (XUA optional/off, a request without assertion) or an assertion without
resource-id (generic XUA): nothing is restricted here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from sqlalchemy import Connection, select

from opendmp.schema import patient, registry_object
from registry.hl7types import cx_match_key
from registry.store import DOCUMENT_KINDS, Kind
from soapstack.wssecurity import FAILED_AUTHENTICATION, SecurityFault


def authorized_patient(identity) -> str | None:
    """The patient the identity is restricted to (its resource-id), or None."""
    return getattr(identity, "patient_id", None) if identity is not None else None


def require_patient(identity, cx: str | None) -> None:
    """Refuse a request for a patient other than the assertion's resource-id."""
    allowed = authorized_patient(identity)
    if allowed is None or cx is None:
        return
    if cx_match_key(allowed) != cx_match_key(cx):
        raise SecurityFault(f"the request is for patient {cx} but the assertion authorizes "
                            f"{allowed} (resource-id)", FAILED_AUTHENTICATION)


def _refuse_disclosure(what: str, patients: Iterable[str]) -> SecurityFault:
    """The refusal; ``patient_ids`` (the patients whose records were asked for) go to the
    ATNA security alert only, so that the attempt appears in their access history
    (CSP art. L. 1111-19), never into the fault's reason."""
    fault = SecurityFault(f"{what} of another patient than the assertion's resource-id: "
                          "refused (the assertion authorizes one patient)", FAILED_AUTHENTICATION)
    fault.patient_ids = sorted(set(patients))
    return fault


def _patient_cxs(conn: Connection, pks: set[int]) -> dict[int, str]:
    if not pks:
        return {}
    rows = conn.execute(select(patient.c.pk, patient.c.cx).where(patient.c.pk.in_(sorted(pks))))
    return {r.pk: r.cx for r in rows}


def require_registry_objects(identity, conn: Connection, rows: Iterable) -> None:
    """ITI-18: refuse to return objects (rows with ``kind`` and ``patient_pk``) of another
    patient than the identity's. Associations carry no patient and are not checked."""
    allowed = authorized_patient(identity)
    if allowed is None:
        return
    pks = {r.patient_pk for r in rows if r.kind != Kind.ASSOCIATION and r.patient_pk is not None}
    key = cx_match_key(allowed)
    cxs = _patient_cxs(conn, pks)
    if any(cx_match_key(cx) != key for cx in cxs.values()) or len(cxs) != len(pks):
        raise _refuse_disclosure("the query would return registry objects",
                                 (cx for cx in cxs.values() if cx_match_key(cx) != key))


def require_documents(identity, conn: Connection, documents: Mapping[str, str | None]) -> None:
    """ITI-43: refuse to serve documents of another patient than the identity's.

    ``documents`` maps the uniqueIds about to be served (those the repository holds) to
    the patient its index recorded at ITI-41 (:mod:`repository.index`, the SubmissionSet
    patientId as canonical CX; None for documents stored before migration 0007).

    Whose document it is, in this order:

    1. The registry's DocumentEntry, when this node's registry knows the document. The
       registry is the authority: it is where a document's patient changes after the
       fact — a PIX merge (ITI-8 A40 / ITI-44, :func:`registry.store.merge_patient`)
       re-points the subsumed patient's objects to the survivor, and a metadata update
       (ITI-57) can move a misfiled document to its right patient. The index keeps what
       the submitter said at ITI-41; trusting it over the registry would keep serving a
       corrected document to the patient it was wrongly filed under.
    2. Otherwise (a repository in front of a remote registry, ``OPENDMP_REGISTRY_URL``)
       the index's patient, followed through any PIX merge this node's own patient table
       records (its PIX Manager feeds :func:`registry.store.merge_patient` too), so the
       answer agrees with what a registry would say after that merge. Changes made only
       at the remote registry (its merges, ITI-57) do not reach the index: those are
       refused or served as the patient stood at ITI-41 (README, access-policy limits).
    3. No patient at all (neither the registry nor the index knows it): refused, fail
       closed — it cannot be shown to be the assertion's patient's.
    """
    allowed = authorized_patient(identity)
    wanted = sorted(documents)
    if allowed is None or not wanted:
        return
    ro = registry_object
    rows = conn.execute(
        select(ro.c.unique_id, patient.c.cx)
        .join(patient, patient.c.pk == ro.c.patient_pk)
        .where(ro.c.unique_id.in_(wanted), ro.c.kind.in_(DOCUMENT_KINDS)))
    owners: dict[str, set[str]] = {}
    for r in rows:
        owners.setdefault(r.unique_id, set()).add(r.cx)
    indexed = {uid: documents[uid] for uid in wanted
               if uid not in owners and documents[uid] is not None}
    current = _current_identifiers(conn, set(indexed.values()))
    for uid, cx in indexed.items():
        owners[uid] = {current[cx]}
    key = cx_match_key(allowed)
    if any({cx_match_key(cx) for cx in owners.get(uid, ())} != {key} for uid in wanted):
        raise _refuse_disclosure("the request retrieves documents",
                                 (cx for cxs in owners.values() for cx in cxs
                                  if cx_match_key(cx) != key))


def _current_identifiers(conn: Connection, cxs: set[str]) -> dict[str, str]:
    """Each patient identifier as it stands now: the survivor's when this node's patient
    table records it merged (:func:`registry.store.merge_patient` points every merged
    identifier straight at the final survivor), else itself."""
    if not cxs:
        return {}
    survivor = patient.alias("survivor")
    rows = conn.execute(select(patient.c.cx, survivor.c.cx.label("survivor_cx"))
                        .join(survivor, survivor.c.pk == patient.c.merged_into)
                        .where(patient.c.cx.in_(sorted(cxs))))
    merged = {r.cx: r.survivor_cx for r in rows}
    return {cx: merged.get(cx, cx) for cx in cxs}



# ------------------------------------------------------------------------------------------
# Readers over plain HTTP (no SOAP, no assertion): the audit trail (``GET /audit``,
# ``GET /fhir/AuditEvent``), patients' access histories, rendered documents
# (``GET /documents/<uniqueId>.html``) and patients' summaries (``GET /patients/<INS>/summary``).
#
# The trail (``GET /audit``, ``GET /fhir/AuditEvent``) says who accessed which patient's
# record: it is itself health data. Readers are authenticated nodes, not passwords:
#
# ``OPENDMP_AUDIT_READERS``          ``;``-separated TLS client certificate subjects (as
#                                    ``commonName=...,organizationName=...``, or a bare
#                                    commonName) that may read the whole trail: the
#                                    security officer's console, a SIEM collector.
# ``OPENDMP_AUDIT_HISTORY_READERS``  subjects that may read patients' access histories
#                                    only (``GET /audit/patients/<INS>/access-history``):
#                                    e.g. the node of a patient portal, which authenticates
#                                    the patient itself and asks only for that patient's
#                                    history (the portal is out of scope here).
# ``OPENDMP_HEALTH_DATA_READERS``    subjects that may read rendered documents and summaries
#                                    (e.g. a patient-portal node; out of scope here).
# ``OPENDMP_AUDIT_LOOPBACK_READ``    ``1``: requests from the loopback interface may read
#                                    everything without a certificate. Default: ``1`` when
#                                    the HTTP endpoints are not under mutual TLS
#                                    (development: no node can be authenticated at all),
#                                    ``0`` under ``OPENDMP_HTTP_TLS=1`` (production).
#
# A subject is only trusted when it comes from the TLS handshake (gunicorn terminated
# mutual TLS with the configured trust store): there is no header to claim one. The
# command line (``opendmp audit ...``) reads the database directly: whoever runs it holds
# the database credentials (an operator). Refused reads are answered 403 and audited
# (DICOM 110101 Audit Log Used, outcome 8); reads of health data, granted or refused, as
# 110106 Export (cda.web, atna.hooks.health_data_reads).
# ------------------------------------------------------------------------------------------
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

TRAIL = "trail"
HISTORY = "history"
HEALTH_DATA = "health-data"


@dataclass(frozen=True)
class Reader:
    """Who is asking: the TLS client certificate subject (None without mutual TLS) and
    the peer address."""

    subject: str | None
    address: str | None


@dataclass(frozen=True)
class HttpReaders:
    readers: frozenset[str] = frozenset()
    history_readers: frozenset[str] = frozenset()
    health_readers: frozenset[str] = frozenset()
    loopback: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "HttpReaders":
        def subjects(name: str) -> frozenset[str]:
            return frozenset(s.strip() for s in (env.get(name) or "").split(";") if s.strip())

        tls = (env.get("OPENDMP_HTTP_TLS") or "").lower() in ("1", "true", "yes")
        loopback = env.get("OPENDMP_AUDIT_LOOPBACK_READ")
        return cls(subjects("OPENDMP_AUDIT_READERS"), subjects("OPENDMP_AUDIT_HISTORY_READERS"),
                   subjects("OPENDMP_HEALTH_DATA_READERS"),
                   (loopback == "1") if loopback in ("0", "1") else not tls)


def _common_name(subject: str) -> str | None:
    for part in subject.split(","):
        key, _, value = part.partition("=")
        if key.strip() in ("commonName", "CN"):
            return value.strip()
    return None


def _listed(subject: str | None, allowed: frozenset[str]) -> bool:
    if not subject or not allowed:
        return False
    return subject in allowed or _common_name(subject) in allowed


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def may_read(settings: HttpReaders, reader: Reader, what: str) -> Decision:
    """Whether ``reader`` may read ``what`` over plain HTTP: :data:`TRAIL` (the whole audit
    trail), :data:`HISTORY` (a patient's access history) or :data:`HEALTH_DATA` (a rendered
    document, a patient's summary). Audit readers read the trail and the histories, never
    health data: a security officer audits accesses, not records."""
    if what != HEALTH_DATA and _listed(reader.subject, settings.readers):
        return Decision(True, f"audit reader {reader.subject}")
    if what == HISTORY and _listed(reader.subject, settings.history_readers):
        return Decision(True, f"access-history reader {reader.subject}")
    if what == HEALTH_DATA and _listed(reader.subject, settings.health_readers):
        return Decision(True, f"health-data reader {reader.subject}")
    if settings.loopback and reader.address in LOOPBACK:
        return Decision(True, "loopback (development)")
    who = reader.subject or f"{reader.address or 'unknown address'} without a client certificate"
    if what == HEALTH_DATA:
        return Decision(False, f"{who} is not a health-data reader (OPENDMP_HEALTH_DATA_READERS)")
    return Decision(False, f"{who} is not an audit reader (OPENDMP_AUDIT_READERS"
                           + (", OPENDMP_AUDIT_HISTORY_READERS" if what == HISTORY else "") + ")")


__all__ = ["HEALTH_DATA", "HISTORY", "TRAIL", "Decision", "HttpReaders", "Reader",
           "authorized_patient", "may_read", "require_documents", "require_patient",
           "require_registry_objects"]
