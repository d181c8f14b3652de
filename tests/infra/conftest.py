"""Fixtures: a fresh store per test on SQLite and (when configured) PostgreSQL.

Set ``CRYPTO_DOCTOR_TEST_PG_URL`` (``eval "$(tests/marketplace/pg_server.sh start)"``) to also
run the database tests against PostgreSQL; each test gets its own throwaway database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tests.infra.stores import make_test_engine

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
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of a new, empty database on each configured backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    admin_url = make_url(os.environ[PG_ENV].replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"cdinfra_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_test_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
