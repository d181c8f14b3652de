"""teaching rounds: which encrypted fine-tune took each case, and when its image was deleted

``predictor.teach`` (issue 19) records each round and the cases it took; a consenting case's
image is deleted after its round, or when the retention period runs out first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "teaching_rounds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("candidate_sha256", sa.String(length=64), nullable=True),
        sa.Column("epsilon", sa.Float(), nullable=True),
        sa.Column("reasons", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teaching_rounds")),
    )
    with op.batch_alter_table("patient_cases") as batch:
        batch.add_column(sa.Column("teaching_round_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("image_deleted_at", sa.DateTime(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_patient_cases_teaching_round_id_teaching_rounds"),
            "teaching_rounds",
            ["teaching_round_id"],
            ["id"],
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.drop_constraint(
            op.f("fk_patient_cases_teaching_round_id_teaching_rounds"), type_="foreignkey"
        )
        batch.drop_column("image_deleted_at")
        batch.drop_column("teaching_round_id")
    op.drop_table("teaching_rounds")
