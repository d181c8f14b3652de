"""rate limits kept in the store; research rows looked up by release time

``rate_events`` holds the recent claims of each doctor and the recent self-registrations, so
the limits on them hold across restarts and across processes. ``research_rows.published_at``
gets an index: the operator's ``/decisions.csv`` follows rows in release order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "rate_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_events")),
    )
    with op.batch_alter_table("rate_events", schema=None) as batch_op:
        batch_op.create_index("ix_rate_events_key_at", ["key", "at"], unique=False)
    with op.batch_alter_table("research_rows", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_research_rows_published_at"), ["published_at"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("research_rows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_research_rows_published_at"))
    with op.batch_alter_table("rate_events", schema=None) as batch_op:
        batch_op.drop_index("ix_rate_events_key_at")
    op.drop_table("rate_events")
