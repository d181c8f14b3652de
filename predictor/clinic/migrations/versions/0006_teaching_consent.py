"""teaching consent: the patient's choice at upload that the case may teach the model

Asked at upload (``consent`` form field), shown in ``GET /case`` (issue 19). Cases uploaded
before were never asked: they get false, the default.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.add_column(
            sa.Column("teaching_consent", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.drop_column("teaching_consent")
