"""Alembic environment of the clinic's store (run by :func:`predictor.clinic.store.migrate_clinic`)."""

from __future__ import annotations

from alembic import context

from infra.sqltypes import UTCDateTime
from marketplace.storage import make_engine
from predictor.clinic.models import ClinicBase

config = context.config
target_metadata = ClinicBase.metadata


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
try:
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            render_item=render_item,
        )
        context.run_migrations()
finally:
    engine.dispose()
