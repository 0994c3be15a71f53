"""Registry tables: patient, registry_object, object_key.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patient",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("cx", sa.String(256), nullable=False, unique=True),
        sa.Column("merged_into", PK, sa.ForeignKey("patient.pk"), nullable=True),
    )
    op.create_table(
        "registry_object",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("patient_pk", PK, sa.ForeignKey("patient.pk"), nullable=True),
        sa.Column("unique_id", sa.String(128)),
        sa.Column("lid", sa.String(64)),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("home", sa.String(128)),
        sa.Column("creation_time", sa.BigInteger),
        sa.Column("service_start_time", sa.BigInteger),
        sa.Column("service_stop_time", sa.BigInteger),
        sa.Column("class_code", sa.String(256)),
        sa.Column("type_code", sa.String(256)),
        sa.Column("format_code", sa.String(256)),
        sa.Column("facility_type_code", sa.String(256)),
        sa.Column("practice_setting_code", sa.String(256)),
        sa.Column("repository_unique_id", sa.String(128)),
        sa.Column("hash", sa.String(64)),
        sa.Column("size", sa.BigInteger),
        sa.Column("submission_time", sa.BigInteger),
        sa.Column("source_id", sa.String(128)),
        sa.Column("content_type_code", sa.String(256)),
        sa.Column("last_update_time", sa.BigInteger),
        sa.Column("assoc_type", sa.String(64)),
        sa.Column("source_uuid", sa.String(64)),
        sa.Column("target_uuid", sa.String(64)),
        sa.Column("ebrim", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_ro_patient", "registry_object",
                    ["patient_pk", "kind", "status", "creation_time"])
    op.create_index("ix_ro_unique_id", "registry_object", ["unique_id"])
    op.create_index("ix_ro_lid", "registry_object", ["lid"])
    op.create_index("ix_ro_source", "registry_object", ["source_uuid"])
    op.create_index("ix_ro_target", "registry_object", ["target_uuid"])
    where = sa.text("kind IN (3, 4)")
    op.create_index("uq_ro_package_unique_id", "registry_object", ["unique_id"], unique=True,
                    sqlite_where=where, postgresql_where=where)
    op.create_table(
        "object_key",
        sa.Column("object_pk", PK, sa.ForeignKey("registry_object.pk", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("key", sa.SmallInteger, nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.create_index("ix_ok_value", "object_key", ["key", "value", "object_pk"])
    op.create_index("ix_ok_object", "object_key", ["object_pk"])


def downgrade() -> None:
    op.drop_table("object_key")
    op.drop_table("registry_object")
    op.drop_table("patient")
