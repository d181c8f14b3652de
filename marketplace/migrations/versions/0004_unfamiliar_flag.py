"""unfamiliar flag: on cases (priced at the top tier) and on research rows (a quasi-identifier)

The MPC program opens one bit per image, unfamiliar or not (issue 18). The clinic sends it
in ``case.opened``; the market keeps it on the case and on its research row. Existing rows
were never flagged: they get false.

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
    for table in ("cases", "research_rows"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("unfamiliar", sa.Boolean(), server_default=sa.false(), nullable=False)
            )


def downgrade() -> None:
    """Downgrade schema."""
    for table in ("research_rows", "cases"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("unfamiliar")
