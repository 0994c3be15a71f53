"""Repository index: repository_document.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "repository_document",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("unique_id", sa.String(128), nullable=False, unique=True),
        sa.Column("repository_unique_id", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha1", sa.String(40), nullable=False),
        sa.Column("mime_type", sa.String(128), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rd_state", "repository_document", ["state", "created_at"])


def downgrade() -> None:
    op.drop_table("repository_document")
