"""Audit Record Repository (ATNA, ITI-20): audit_event, audit_key.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("event_time", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_action", sa.String(4), nullable=True),
        sa.Column("outcome", sa.SmallInteger, nullable=False),
        sa.Column("event_type", sa.String(64), nullable=True),
        sa.Column("source_id", sa.String(256), nullable=True),
        sa.Column("valid", sa.SmallInteger, nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("peer", sa.String(512), nullable=True),
        sa.Column("origin", sa.String(64), nullable=True),
        sa.Column("origin_seq", sa.BigInteger, nullable=True),
        sa.Column("xml", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_audit_event_time", "audit_event", ["event_time"])
    op.create_index("ix_audit_event_id", "audit_event", ["event_id", "event_time"])
    op.create_index("uq_audit_event_origin", "audit_event", ["origin", "origin_seq"], unique=True)
    op.create_table(
        "audit_key",
        sa.Column("event_pk", PK, sa.ForeignKey("audit_event.pk"), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.create_index("ix_audit_key", "audit_key", ["kind", "value", "event_pk"])


def downgrade() -> None:
    op.drop_table("audit_key")
    op.drop_table("audit_event")
