"""All tables, in one module (SQLAlchemy Core). Alembic (opendmp/migrations) owns changes.

Registry layout (../shared/research/perf.md §4): one row per registry object with typed,
indexed query columns plus the object's ebRIM kept for LeafClass answers; multi-valued
query keys in the narrow side table ``object_key``. Times are HL7 DTM values padded to
14 digits (``YYYYMMDDhhmmss``) as integers, so that comparisons are numeric whatever the
submitted precision.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
)

metadata = MetaData()

#: A 64-bit key that is still SQLite's rowid alias (INTEGER PRIMARY KEY).
PK = BigInteger().with_variant(Integer(), "sqlite")

patient = Table(
    "patient",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: the affinity-domain identifier as an HL7 CX (``id^^^&oid&ISO``).
    Column("cx", String(256), nullable=False, unique=True),
    #: set when this identifier was merged into another one (PIX, ITI-8 A40).
    Column("merged_into", PK, ForeignKey("patient.pk"), nullable=True),
)

registry_object = Table(
    "registry_object",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("uuid", String(64), nullable=False, unique=True),
    #: see registry.store.Kind
    Column("kind", SmallInteger, nullable=False),
    #: see registry.store.STATUS_CODES
    Column("status", SmallInteger, nullable=False),
    Column("patient_pk", PK, ForeignKey("patient.pk"), nullable=True),
    Column("unique_id", String(128), nullable=True),
    Column("lid", String(64), nullable=True),
    Column("version", Integer, nullable=False, default=1),
    Column("home", String(128), nullable=True),
    # DocumentEntry
    Column("creation_time", BigInteger, nullable=True),
    Column("service_start_time", BigInteger, nullable=True),
    Column("service_stop_time", BigInteger, nullable=True),
    Column("class_code", String(256), nullable=True),
    Column("type_code", String(256), nullable=True),
    Column("format_code", String(256), nullable=True),
    Column("facility_type_code", String(256), nullable=True),
    Column("practice_setting_code", String(256), nullable=True),
    Column("repository_unique_id", String(128), nullable=True),
    Column("hash", String(64), nullable=True),
    Column("size", BigInteger, nullable=True),
    # SubmissionSet / Folder
    Column("submission_time", BigInteger, nullable=True),
    Column("source_id", String(128), nullable=True),
    Column("content_type_code", String(256), nullable=True),
    Column("last_update_time", BigInteger, nullable=True),
    # Association
    Column("assoc_type", String(64), nullable=True),
    Column("source_uuid", String(64), nullable=True),
    Column("target_uuid", String(64), nullable=True),
    #: the object's ebRIM 3.0 element, UTF-8, as returned by LeafClass queries.
    Column("ebrim", LargeBinary, nullable=False),
)
Index("ix_ro_patient", registry_object.c.patient_pk, registry_object.c.kind,
      registry_object.c.status, registry_object.c.creation_time)
Index("ix_ro_unique_id", registry_object.c.unique_id)
Index("ix_ro_lid", registry_object.c.lid)
Index("ix_ro_source", registry_object.c.source_uuid)
Index("ix_ro_target", registry_object.c.target_uuid)
#: SubmissionSet and Folder uniqueIds are unique in the registry (XDSDuplicateUniqueIdInRegistry).
Index("uq_ro_package_unique_id", registry_object.c.unique_id, unique=True,
      sqlite_where=registry_object.c.kind.in_([3, 4]),
      postgresql_where=registry_object.c.kind.in_([3, 4]))

object_key = Table(
    "object_key",
    metadata,
    Column("object_pk", PK, ForeignKey("registry_object.pk", ondelete="CASCADE"),
           nullable=False),
    #: see registry.store.Key
    Column("key", SmallInteger, nullable=False),
    Column("value", String(256), nullable=False),
)
Index("ix_ok_value", object_key.c.key, object_key.c.value, object_key.c.object_pk)
Index("ix_ok_object", object_key.c.object_pk)


#: The Document Repository's index of stored documents (ITI-41 in, ITI-43 out). A row is
#: ``staged`` from before its bytes are committed to the store until its registration
#: commits; the recovery sweep removes staged rows (and their bytes) left by a crash.
repository_document = Table(
    "repository_document",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("unique_id", String(128), nullable=False, unique=True),
    Column("repository_unique_id", String(64), nullable=False),
    #: key of the encrypted bytes in the document store (repository.storage).
    Column("storage_key", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha1", String(40), nullable=False),
    Column("mime_type", String(128), nullable=False),
    #: see repository.index.STAGED / COMMITTED
    Column("state", SmallInteger, nullable=False),
    #: seconds since the epoch, for the recovery sweep's age check.
    Column("created_at", BigInteger, nullable=False),
    #: the SubmissionSet patientId (canonical CX) received at ITI-41; NULL for documents
    #: stored before migration 0007. opendmp.policy.require_documents reads it when the
    #: registry does not know the document (a remote registry).
    Column("patient_cx", String(256), nullable=True),
)
Index("ix_rd_state", repository_document.c.state, repository_document.c.created_at)


# =========================================================================== PIX Manager
# pix/manager.py (ITI-8/9/10, later ITI-44/45/46). A cross-reference group
# (``pix_xref``) is one patient; its identifiers (``pix_identifier``) are linked through
# the INS when one is known. A merged (subsumed) identifier keeps its row, inactive, with
# ``merged_into`` set. ``pix_outbox`` holds ITI-10 notifications until each consumer
# acknowledges them (in order per consumer).

pix_xref = Table(
    "pix_xref",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: milliseconds since the epoch of the last change of the group's membership.
    Column("updated_at", BigInteger, nullable=False),
)

pix_identifier = Table(
    "pix_identifier",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: the domain key: the assigning authority's universal id (OID), else its namespace.
    Column("domain", String(128), nullable=False),
    #: CX.1
    Column("id_value", String(128), nullable=False),
    #: CX.5 as last fed (PI, NH, INS, ...)
    Column("type_code", String(16), nullable=True),
    Column("xref_pk", PK, ForeignKey("pix_xref.pk"), nullable=False),
    #: set when this identifier was subsumed by a merge (it is then inactive).
    Column("merged_into", PK, ForeignKey("pix_identifier.pk"), nullable=True),
    #: 1 for a matricule INS (INS OIDs), whose traits are the reference for its group.
    Column("is_ins", SmallInteger, nullable=False, default=0),
    #: identity traits as JSON (pix.model.Traits), as last fed for this identifier.
    Column("traits", String(2048), nullable=True),
    #: normalized name|first name|birth date|sex, for the opt-in trait-based linking.
    Column("match_key", String(256), nullable=True),
    #: MSH-3|MSH-4 of the last feed.
    Column("source", String(256), nullable=True),
    Column("updated_at", BigInteger, nullable=False),
)
Index("uq_pix_identifier", pix_identifier.c.domain, pix_identifier.c.id_value, unique=True)
Index("ix_pix_identifier_xref", pix_identifier.c.xref_pk)
Index("ix_pix_identifier_match", pix_identifier.c.match_key)

pix_outbox = Table(
    "pix_outbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: consumer name as configured (OPENDMP_PIX_CONSUMERS).
    Column("consumer", String(256), nullable=False),
    #: the ITI-10 message (ER7, UTF-8).
    Column("message", LargeBinary, nullable=False),
    #: see pix.outbox.PENDING / DELIVERED / REJECTED
    Column("state", SmallInteger, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    #: milliseconds since the epoch.
    Column("created_at", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("done_at", BigInteger, nullable=True),
    Column("last_error", String(512), nullable=True),
)
Index("ix_pix_outbox_due", pix_outbox.c.consumer, pix_outbox.c.state, pix_outbox.c.pk)


# ---------------------------------------------------------------------------- CDA summary
#: Facts extracted from structured CDA bodies at ITI-41 (cda.summary): vaccinations,
#: allergies, blood group, current treatments, lab results. One row per fact, keyed by the
#: patient's INS; a re-submitted document replaces its rows. Migration 0004.
cda_summary_item = Table(
    "cda_summary_item",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: the INS (15 characters) and its OID (NIR, NIA, test, demo).
    Column("ins", String(64), nullable=False),
    Column("ins_root", String(64), nullable=False),
    Column("document_unique_id", String(128), nullable=False),
    #: vaccination, allergy, blood_group, treatment, lab_result
    Column("kind", String(16), nullable=False),
    Column("label", String(512), nullable=True),
    Column("code", String(128), nullable=True),
    Column("code_system", String(128), nullable=True),
    Column("value", String(256), nullable=True),
    Column("unit", String(64), nullable=True),
    Column("reference_range", String(256), nullable=True),
    Column("interpretation", String(32), nullable=True),
    #: HL7 TS as written in the document.
    Column("effective_time", String(32), nullable=True),
    Column("detail", String(512), nullable=True),
)
Index("ix_cs_patient", cda_summary_item.c.ins, cda_summary_item.c.kind)
Index("ix_cs_document", cda_summary_item.c.document_unique_id)


# =========================================================================== ATNA
# atna/store.py: the Audit Record Repository (ITI-20). One row per received audit message
# with its indexed fields and the original XML; multi-valued search keys (patients, users,
# documents, submission sets, event type codes, network access points) in ``audit_key``.
# ``origin``/``origin_seq`` identify a message from an OpenDMP spool (atna.spool), so that a
# re-sent message is stored once. Migration 0005.
audit_event = Table(
    "audit_event",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    #: microseconds since the epoch (UTC): EventDateTime, and when we received it.
    Column("event_time", BigInteger, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    #: EventID code (110112 Query, 110106 Export, 110107 Import, 110100, 110113 ...)
    Column("event_id", String(64), nullable=False),
    Column("event_action", String(4), nullable=True),
    #: EventOutcomeIndicator: 0, 4, 8, 12
    Column("outcome", SmallInteger, nullable=False),
    #: the first EventTypeCode (e.g. ITI-18); all of them are in audit_key.
    Column("event_type", String(64), nullable=True),
    Column("source_id", String(256), nullable=True),
    #: 1 when the message validates against the DICOM audit schema.
    Column("valid", SmallInteger, nullable=False),
    #: tls, udp or local; the peer's certificate subject or address.
    Column("transport", String(8), nullable=False),
    Column("peer", String(512), nullable=True),
    Column("origin", String(64), nullable=True),
    Column("origin_seq", BigInteger, nullable=True),
    Column("xml", LargeBinary, nullable=False),
)
Index("ix_audit_event_time", audit_event.c.event_time)
Index("ix_audit_event_id", audit_event.c.event_id, audit_event.c.event_time)
Index("uq_audit_event_origin", audit_event.c.origin, audit_event.c.origin_seq, unique=True)

audit_key = Table(
    "audit_key",
    metadata,
    #: audit_event.pk; no foreign key (written with its event by atna.store; migration 0006)
    Column("event_pk", PK, nullable=False),
    #: see atna.store.KEY_*: 1 patient, 2 user, 3 document, 4 submission set, 5 event type,
    #: 6 network access point
    Column("kind", SmallInteger, nullable=False),
    Column("value", String(256), nullable=False),
)
Index("ix_audit_key", audit_key.c.kind, audit_key.c.value, audit_key.c.event_pk)
