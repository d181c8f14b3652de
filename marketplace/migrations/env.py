"""Alembic environment, configured in code by :func:`marketplace.storage.migrate`."""

from __future__ import annotations

from alembic import context

import marketplace.storage.models  # noqa: F401  (registers the marketplace tables)
from marketplace.storage.base import Base, UTCDateTime
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


def run_migrations_online() -> None:
    """Migrate through an engine built like the application's (SQLite pragmas included)."""
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
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
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
