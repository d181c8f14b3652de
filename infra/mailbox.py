"""Transactional outbox and idempotent inbox, declared by each store from these mixins.

Why: a state change and the message announcing it must commit together (``post`` adds the
message to the caller's unit of work), and a message delivered twice must take effect once
(``accept`` records its id in the receiver's unit of work, refusing an id seen before).
None of these functions commits; the caller's transaction decides.

    class Outbox(OutboxMixin, Base):
        __tablename__ = "outbox"

    class Inbox(InboxMixin, Base):
        __tablename__ = "inbox"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Integer, String, Text, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from infra.messaging import Envelope, canonical_json, check, new_message_id
from infra.sqltypes import UTCDateTime

#: Longest ``last_error`` kept: enough to diagnose, never a response body.
MAX_ERROR_CHARS = 500


class OutboxMixin:
    """Messages this store has to deliver, in the order they were posted (``id``)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32), unique=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # canonical JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class InboxMixin:
    """Ids of the messages this store has applied: the key of exactly-once."""

    message_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sender: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class PendingMessage:
    """An undelivered outbox row, as the courier needs it."""

    message_id: str
    destination: str
    type: str
    body: dict[str, Any]
    created_at: datetime
    attempts: int


def post(
    session: Session,
    outbox_cls: type[OutboxMixin],
    *,
    destination: str,
    type: str,
    body: dict[str, Any],
    now: datetime,
    message_id: str | None = None,
) -> str:
    """Queue a message in the caller's unit of work (committed with it) and return its id.

    Raises ``ValueError`` for a message no receiver would accept (bad names, a body that is
    not plain JSON or too large), so it never enters the outbox to block the ones after it.
    """
    message_id = message_id or new_message_id()
    # Checked as it will be sealed (the sender's name is the courier's, checked there).
    check(Envelope(message_id, type, destination, destination, now.timestamp(), body))
    row = outbox_cls()
    row.message_id = message_id
    row.destination = destination
    row.type = type
    row.body = canonical_json(body).decode("ascii")
    row.created_at = now
    row.attempts = 0
    session.add(row)
    return message_id


def undelivered(
    session: Session, outbox_cls: type[OutboxMixin], destination: str, limit: int
) -> list[PendingMessage]:
    """Up to ``limit`` messages not yet delivered to ``destination``, oldest first."""
    rows = session.scalars(
        select(outbox_cls)
        .where(outbox_cls.destination == destination, outbox_cls.delivered_at.is_(None))
        .order_by(outbox_cls.id)
        .limit(limit)
    )
    return [
        PendingMessage(
            message_id=row.message_id,
            destination=row.destination,
            type=row.type,
            body=json.loads(row.body),
            created_at=row.created_at,
            attempts=row.attempts,
        )
        for row in rows
    ]


def mark_delivered(
    session: Session, outbox_cls: type[OutboxMixin], message_id: str, now: datetime
) -> None:
    """Record that the destination acknowledged ``message_id`` (a no-op if already marked)."""
    session.execute(
        update(outbox_cls)
        .where(outbox_cls.message_id == message_id, outbox_cls.delivered_at.is_(None))
        .values(delivered_at=now)
    )


def note_failure(
    session: Session, outbox_cls: type[OutboxMixin], message_id: str, error: str
) -> None:
    """Count a failed attempt; ``error`` (truncated) is a status or error class, never a body."""
    session.execute(
        update(outbox_cls)
        .where(outbox_cls.message_id == message_id)
        .values(attempts=outbox_cls.attempts + 1, last_error=error[:MAX_ERROR_CHARS])
    )


def accept(
    session: Session, inbox_cls: type[InboxMixin], envelope: Envelope, now: datetime
) -> bool:
    """Record ``envelope``'s id in the caller's transaction; False if it was accepted before.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: a concurrent duplicate waits for the
    first transaction and then inserts nothing (PostgreSQL row lock, SQLite write lock), so
    exactly one of them gets True. On SQLite, call it first in the unit of work: a deferred
    transaction that read before its first write cannot wait for the lock.
    """
    values = {
        "message_id": envelope.message_id,
        "sender": envelope.sender,
        "type": envelope.type,
        "received_at": now,
    }
    dialect = session.get_bind().dialect.name
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(inbox_cls).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(inbox_cls).values(values).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"accept() supports SQLite and PostgreSQL, not {dialect}")
    return session.execute(statement.returning(inbox_cls.message_id)).first() is not None
