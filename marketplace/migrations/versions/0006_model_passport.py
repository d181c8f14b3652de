"""model passport: the model version (its passport's name) of each case and research row

Sent by the clinic in ``case.opened`` (issue 15): the version party 1 attested before
serving, its passport id, and whether it was attested at all. Research rows carry the name
in their ``model_version`` CSV column, a quasi-identifier. Older cases have none ("unknown").

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

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
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("passport_version", sa.String(80), nullable=True))
        batch.add_column(sa.Column("passport_id", sa.String(42), nullable=True))
        batch.add_column(sa.Column("model_attested", sa.Boolean(), nullable=True))
    with op.batch_alter_table("research_rows") as batch:
        batch.add_column(sa.Column("passport_version", sa.String(80), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("research_rows") as batch:
        batch.drop_column("passport_version")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("model_attested")
        batch.drop_column("passport_id")
        batch.drop_column("passport_version")
