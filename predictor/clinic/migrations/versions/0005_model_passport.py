"""model passport: which attested model version made each prediction (issue 15)

Party 1 checks its checkpoint against the model owner's passport on chain before serving and
announces the version with the model card; party 0 keeps it with each prediction. Cases
predicted before have none (shown as unknown).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.add_column(sa.Column("model_version", sa.String(80), nullable=True))
        batch.add_column(sa.Column("passport_id", sa.String(42), nullable=True))
        batch.add_column(sa.Column("model_attested", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("patient_cases") as batch:
        batch.drop_column("model_attested")
        batch.drop_column("passport_id")
        batch.drop_column("model_version")
