"""Fixtures: a migrated database per test, on SQLite and (when configured) PostgreSQL.

Set ``CRYPTO_DOCTOR_TEST_PG_URL`` to an admin URL of a running PostgreSQL server
(``tests/marketplace/pg_server.sh start`` prints one) to also run every
database test against PostgreSQL; each test gets its own throwaway database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from marketplace.storage import make_engine, make_sessionmaker, migrate
from tests.marketplace.helpers import empty_pg_database

PG_ENV = "CRYPTO_DOCTOR_TEST_PG_URL"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} not set"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of a new, empty (not yet migrated) database on each configured backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'marketplace.sqlite3'}"
        return
    with empty_pg_database("cdtest") as url:
        yield url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """URL of a freshly migrated, empty database."""
    migrate(empty_db_url)
    return empty_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s
