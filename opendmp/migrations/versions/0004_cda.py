"""CDA summary: cda_summary_item (facts from structured CDA bodies, per patient INS).

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cda_summary_item",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("ins", sa.String(64), nullable=False),
        sa.Column("ins_root", sa.String(64), nullable=False),
        sa.Column("document_unique_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(512), nullable=True),
        sa.Column("code", sa.String(128), nullable=True),
        sa.Column("code_system", sa.String(128), nullable=True),
        sa.Column("value", sa.String(256), nullable=True),
        sa.Column("unit", sa.String(64), nullable=True),
        sa.Column("reference_range", sa.String(256), nullable=True),
        sa.Column("interpretation", sa.String(32), nullable=True),
        sa.Column("effective_time", sa.String(32), nullable=True),
        sa.Column("detail", sa.String(512), nullable=True),
    )
    op.create_index("ix_cs_patient", "cda_summary_item", ["ins", "kind"])
    op.create_index("ix_cs_document", "cda_summary_item", ["document_unique_id"])


def downgrade() -> None:
    op.drop_table("cda_summary_item")
