"""Alembic environment, configured in code by :func:`marketplace.storage.migrate`."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, event

import marketplace.storage.models  # noqa: F401  (registers the marketplace tables)
from infra.sqltypes import UTCDateTime
from marketplace.storage.base import Base
from marketplace.storage.engine import make_engine
from marketplace.storage.unit import SQLITE_BEGIN

config = context.config
MIGRATION_LOCK_ID = 0x63727970746F  # arbitrary constant: 'crypto'
target_metadata = Base.metadata


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Render the UTCDateTime decorator as a plain DateTime column in migration files."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


def _check_foreign_keys(connection: Connection) -> None:
    """Refuse to commit a migration that left a row pointing at nothing (SQLite)."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")


def run_migrations_online() -> None:
    """Migrate through an engine built like the application's (SQLite pragmas included)."""
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    if engine.dialect.name == "sqlite":
        # Batch mode rebuilds a table (copy, drop, rename): SQLite's own procedure for that
        # runs with foreign keys off, and checks them all before commit (below). Added after
        # make_engine's own hook, so it wins on the migration's connection only.
        event.listen(engine, "connect", _foreign_keys_off)
    try:
        # Both party processes may migrate at start-up: take the SQLite write lock first.
        with engine.connect().execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}) as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                render_item=render_item,
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # Serialise concurrent migrators (both party processes start together).
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
                context.run_migrations()
                if connection.dialect.name == "sqlite":
                    _check_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
