"""unfamiliar flag: the MPC program's bit that an image is unlike the training data

Kept with the prediction, shown to the patient, sent to the marketplace in ``case.opened``
(issue 18). Cases predicted before were never flagged: they get false.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.add_column(
            sa.Column("unfamiliar", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.drop_column("unfamiliar")
