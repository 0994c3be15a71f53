"""ATNA: audit_key without its foreign key to audit_event.

The search keys are derived from the stored message and written only by
``atna.store.insert_batch``, in the same transaction as their audit_event row; the
foreign-key check cost PostgreSQL a lookup per key row (7 per ITI-18 audit message, about
a quarter of the server's CPU per ingested message, benchmarks/README.md "ATNA").

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":  # SQLite cannot drop a constraint: rebuild the table
        op.create_table(
            "audit_key_new",
            sa.Column("event_pk", PK, nullable=False),
            sa.Column("kind", sa.SmallInteger, nullable=False),
            sa.Column("value", sa.String(256), nullable=False),
        )
        op.execute("INSERT INTO audit_key_new (event_pk, kind, value) "
                   "SELECT event_pk, kind, value FROM audit_key")
        op.drop_index("ix_audit_key", "audit_key")
        op.drop_table("audit_key")
        op.rename_table("audit_key_new", "audit_key")
        op.create_index("ix_audit_key", "audit_key", ["kind", "value", "event_pk"])
        return
    for fk in sa.inspect(bind).get_foreign_keys("audit_key"):
        op.drop_constraint(fk["name"], "audit_key", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # the key table works the same without the constraint
    op.create_foreign_key("audit_key_event_pk_fkey", "audit_key", "audit_event",
                          ["event_pk"], ["pk"])
