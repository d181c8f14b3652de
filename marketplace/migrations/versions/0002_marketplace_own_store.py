"""marketplace store of its own: the market's view of a case, outbox and inbox

The clinic (party 0) now keeps cases, patient tokens, failures and diagnoses for patients in
its own store and tells the marketplace about a predicted case with a signed ``case.opened``
message. So the marketplace's ``cases`` table loses the patient-side columns, keeps only cases
the market knows of (open, under review, settled), and gains the ``outbox`` and ``inbox`` of
its messages with the clinic.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_message_id")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_destination"), ["destination"], unique=False)

    # Queued and failed cases were never priced: no escrow, claim or vote refers to them, and
    # the market has no use for them (they are the clinic's).
    op.execute("DELETE FROM cases WHERE status IN ('queued', 'failed')")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_column("patient_token_hash")
        batch_op.drop_column("failure_reason")


def downgrade() -> None:
    """Downgrade schema (patient columns come back empty: their data lives at the clinic)."""
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("patient_token_hash", sa.String(length=64), nullable=False, server_default="")
        )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.alter_column("patient_token_hash", server_default=None)

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_destination"))

    op.drop_table("outbox")
    op.drop_table("inbox")
