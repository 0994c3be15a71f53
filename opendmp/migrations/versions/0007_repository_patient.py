"""Repository index: the patient of each stored document (repository_document.patient_cx).

Nullable: documents stored before this revision have no recorded patient, and a
patient-scoped ITI-43 for them is refused when the registry does not know them either
(opendmp.policy.require_documents). No index: the column is read by the row's uniqueId
(already uniquely indexed), never searched.

Revision ID: 0007
Revises: 0005 (the lead chains it after 0006 at merge)
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column("repository_document", sa.Column("patient_cx", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("repository_document") as batch:
        batch.drop_column("patient_cx")
