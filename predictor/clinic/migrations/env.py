"""Alembic environment of the clinic's store (run by :func:`predictor.clinic.store.migrate_clinic`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from infra.sqltypes import UTCDateTime
from marketplace.storage import make_engine
from predictor.clinic.models import ClinicBase

config = context.config
target_metadata = ClinicBase.metadata


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


#: Several party pairs start at once against one PostgreSQL store: one migrates, the others
#: wait for it (a transaction-scoped advisory lock), then find the schema current.
MIGRATION_LOCK = 0x63642D636C696E  # "cd-clin"

engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
try:
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            render_item=render_item,
        )
        context.run_migrations()
finally:
    engine.dispose()
