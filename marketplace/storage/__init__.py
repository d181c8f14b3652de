"""Storage adapter of the marketplace: engine factory, its declarative ``Base`` and migrations.

Every marketplace table derives from :class:`Base`, so one Alembic history
(``marketplace/migrations``) covers the marketplace's store; the clinic keeps its own.
"""

from infra.sqltypes import UTCDateTime
from marketplace.storage.base import Base
from marketplace.storage.engine import (
    DEFAULT_MARKET_DB_URL,
    make_engine,
    make_sessionmaker,
    normalize_url,
)
from marketplace.storage.migrate import migrate

__all__ = [
    "DEFAULT_MARKET_DB_URL",
    "Base",
    "UTCDateTime",
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "normalize_url",
]
