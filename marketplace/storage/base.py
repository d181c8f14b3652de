"""Declarative base of the marketplace's store (its own metadata and migration history).

Column types every store shares (``UTCDateTime``) live in :mod:`infra.sqltypes`.
"""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Deterministic constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base class of the marketplace's tables (one metadata, one migration history)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
