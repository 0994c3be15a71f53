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
  be the assertion's patient's.

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

from typing import Iterable

from sqlalchemy import Connection, select

from opendmp.schema import patient, registry_object
from registry.store import DOCUMENT_KINDS, Kind
from soapstack.wssecurity import FAILED_AUTHENTICATION, SecurityFault



def cx_key(cx: str) -> tuple[str, str]:
    """(id, assigning authority OID) of an HL7 CX: ``id^^^&oid&ISO`` with or without CX.5."""
    parts = cx.strip().split("^")
    authority = parts[3].split("&") if len(parts) > 3 else [""]
    oid = authority[1] if len(authority) > 1 else authority[0]
    return parts[0].strip(), oid.strip()


def authorized_patient(identity) -> str | None:
    """The patient the identity is restricted to (its resource-id), or None."""
    return getattr(identity, "patient_id", None) if identity is not None else None


def require_patient(identity, cx: str | None) -> None:
    """Refuse a request for a patient other than the assertion's resource-id."""
    allowed = authorized_patient(identity)
    if allowed is None or cx is None:
        return
    if cx_key(allowed) != cx_key(cx):
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
    key = cx_key(allowed)
    cxs = _patient_cxs(conn, pks)
    if any(cx_key(cx) != key for cx in cxs.values()) or len(cxs) != len(pks):
        raise _refuse_disclosure("the query would return registry objects",
                                 (cx for cx in cxs.values() if cx_key(cx) != key))


def require_documents(identity, conn: Connection, unique_ids: Iterable[str]) -> None:
    """ITI-43: refuse to serve documents (by uniqueId) of another patient than the
    identity's. The patient is the registered DocumentEntry's; a document this node's
    registry does not know (a repository in front of a remote registry) cannot be shown
    to be the patient's and is refused too (fail closed)."""
    allowed = authorized_patient(identity)
    wanted = sorted(set(unique_ids))
    if allowed is None or not wanted:
        return
    ro = registry_object
    rows = conn.execute(
        select(ro.c.unique_id, patient.c.cx)
        .join(patient, patient.c.pk == ro.c.patient_pk)
        .where(ro.c.unique_id.in_(wanted), ro.c.kind.in_(DOCUMENT_KINDS)))
    found = [(r.unique_id, r.cx) for r in rows]
    owners: dict[str, set[tuple[str, str]]] = {}
    for uid, cx in found:
        owners.setdefault(uid, set()).add(cx_key(cx))
    key = cx_key(allowed)
    if any(owners.get(uid) != {key} for uid in wanted):
        raise _refuse_disclosure("the request retrieves documents",
                                 (cx for _, cx in found if cx_key(cx) != key))


__all__ = ["authorized_patient", "cx_key", "require_documents", "require_patient",
           "require_registry_objects"]
