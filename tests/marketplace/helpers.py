"""Shared constants and helpers of the marketplace tests."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


MODEL_SHA = "ab" * 32
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


#: the PostgreSQL server the storage tests may use (``tests/marketplace/pg_server.sh``)
PG_ENV = "CRYPTO_DOCTOR_TEST_PG_URL"


@contextmanager
def empty_pg_database(prefix: str) -> Iterator[str]:
    """URL of a new, empty database on the ``PG_ENV`` server; dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from marketplace.storage import make_engine, normalize_url

    admin_url = make_url(normalize_url(os.environ[PG_ENV]))
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(admin_url.render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
