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
)
Index("ix_rd_state", repository_document.c.state, repository_document.c.created_at)
