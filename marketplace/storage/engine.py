"""Engine factory: SQLite (WAL, shared by the marketplace's processes) or PostgreSQL by URL."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from marketplace.storage.unit import SQLITE_BEGIN

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 15_000
#: The marketplace's own store in a single-host run (the clinic keeps another file).
DEFAULT_MARKET_DB_URL = "sqlite:///var/marketplace/market.sqlite3"


def normalize_url(url: str) -> str:
    """Map ``postgresql://``/``postgres://`` to the installed psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite enable WAL, a busy timeout and foreign keys.

    Write units of work (``storage.unit``) begin SQLite transactions with
    ``BEGIN IMMEDIATE`` so that two processes writing the same file queue on the
    busy timeout instead of failing with "database is locked" when a read
    transaction later upgrades to a write; reads begin deferred and never block.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory; objects stay readable after commit (handlers return them)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
