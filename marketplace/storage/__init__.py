"""Storage adapter: engine factory, the project-wide declarative ``Base`` and migrations.

All project tables (marketplace and others) derive from :class:`Base` so that a
single Alembic history (``marketplace/migrations``) covers the whole schema.
"""

from marketplace.storage.base import Base, UTCDateTime
from marketplace.storage.engine import make_engine, make_sessionmaker, normalize_url
from marketplace.storage.migrate import migrate

__all__ = ["Base", "UTCDateTime", "make_engine", "make_sessionmaker", "migrate", "normalize_url"]
