"""Fixtures: a fresh store per test on SQLite and (when configured) PostgreSQL.

Set ``CRYPTO_DOCTOR_TEST_PG_URL`` (``eval "$(tests/marketplace/pg_server.sh start)"``) to also
run the database tests against PostgreSQL; each test gets its own throwaway database.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.infra.stores import make_test_engine
from tests.marketplace.conftest import empty_db_url  # noqa: F401  (registers the fixture)


@pytest.fixture
def db_url(empty_db_url: str) -> str:  # noqa: F811  (pytest passes the fixture by name)
    """URL of a new, empty database on each configured backend (the suite's one fixture)."""
    return empty_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_test_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
