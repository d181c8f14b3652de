"""cases taught: which model each settled case taught, and each fine-tuned model's parent

Sent by the clinic in ``cases.taught`` (issue 19) when a round of encrypted fine-tuning is
promoted; the doctor page counts a doctor's settled cases that taught the current model.

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
        "model_parents",
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("parent_sha256", sa.String(length=64), nullable=False),
        sa.Column("taught_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_sha256", name=op.f("pk_model_parents")),
    )
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("taught_model_sha256", sa.String(64), nullable=True))
        batch.create_index("ix_cases_predicted_at", ["predicted_at"])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("cases") as batch:
        batch.drop_index("ix_cases_predicted_at")
        batch.drop_column("taught_model_sha256")
    op.drop_table("model_parents")
