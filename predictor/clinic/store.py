"""The clinic store's engine and migrations (its own Alembic history, in ``migrations/``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session, sessionmaker

from marketplace.storage import make_engine, make_sessionmaker, normalize_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: The embedded default of a single-host run: a SQLite file in the clinic's own folder.
DEFAULT_CLINIC_DB_URL = "sqlite:///var/party0/clinic.sqlite3"


def migrate_clinic(url: str) -> None:
    """Bring the clinic database at ``url`` to the newest schema."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    command.upgrade(config, "head")


def clinic_sessions(url: str) -> sessionmaker[Session]:
    """Migrate, then a session factory over the clinic's database."""
    migrate_clinic(url)
    return make_sessionmaker(make_engine(url))
