"""PIX Manager: pix_xref, pix_identifier, pix_outbox.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pix_xref",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "pix_identifier",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("domain", sa.String(128), nullable=False),
        sa.Column("id_value", sa.String(128), nullable=False),
        sa.Column("type_code", sa.String(16), nullable=True),
        sa.Column("xref_pk", PK, sa.ForeignKey("pix_xref.pk"), nullable=False),
        sa.Column("merged_into", PK, sa.ForeignKey("pix_identifier.pk"), nullable=True),
        sa.Column("is_ins", sa.SmallInteger, nullable=False),
        sa.Column("traits", sa.String(2048), nullable=True),
        sa.Column("match_key", sa.String(256), nullable=True),
        sa.Column("source", sa.String(256), nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("uq_pix_identifier", "pix_identifier", ["domain", "id_value"], unique=True)
    op.create_index("ix_pix_identifier_xref", "pix_identifier", ["xref_pk"])
    op.create_index("ix_pix_identifier_match", "pix_identifier", ["match_key"])
    op.create_table(
        "pix_outbox",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.String(256), nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("done_at", sa.BigInteger, nullable=True),
        sa.Column("last_error", sa.String(512), nullable=True),
    )
    op.create_index("ix_pix_outbox_due", "pix_outbox", ["consumer", "state", "pk"])


def downgrade() -> None:
    op.drop_table("pix_outbox")
    op.drop_table("pix_identifier")
    op.drop_table("pix_xref")
