"""A test-local store (its own Base) declaring the mailbox tables from the infra mixins."""

from __future__ import annotations

from sqlalchemy import Engine, String, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from infra.mailbox import InboxMixin, OutboxMixin


class Base(DeclarativeBase):
    """One organisation's store, as the lead's stores will declare theirs."""


class Outbox(OutboxMixin, Base):
    __tablename__ = "outbox"


class Inbox(InboxMixin, Base):
    __tablename__ = "inbox"


class Effect(Base):
    """What a message handler changes: one row per application of a message."""

    __tablename__ = "effect"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(200))


def make_test_engine(url: str) -> Engine:
    """An engine with the schema created; SQLite waits on its write lock like production."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

    else:
        engine = create_engine(url)
    Base.metadata.create_all(engine)
    return engine
