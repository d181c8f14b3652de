"""The patient's teaching consent: asked at upload, kept with the case, shown to the patient;
on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text

from marketplace.errors import InvalidInput
from marketplace.storage import make_engine, make_sessionmaker, normalize_url
from predictor.clinic import cases
from predictor.clinic.models import ClinicBase
from predictor.clinic.store import MIGRATIONS_DIR, migrate_clinic
from tests.marketplace.conftest import empty_db_url  # noqa: F401  (registers the fixture)
from tests.predictor.test_unfamiliar_case import sessions  # noqa: F401  (the clinic's store)

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TOKEN_HASH = "ab" * 32


def test_consent_is_kept_and_shown_and_defaults_to_no(sessions) -> None:  # noqa: F811
    with sessions() as session:
        asked = cases.create_case(
            session, patient_token_hash=TOKEN_HASH, now=T0, teaching_consent=True
        )
        not_asked = cases.create_case(session, patient_token_hash=TOKEN_HASH, now=T0)
        session.commit()
    with sessions() as session:
        assert cases.patient_view(session, asked, TOKEN_HASH).to_json()["teaching_consent"] is True
        view = cases.patient_view(session, not_asked, TOKEN_HASH).to_json()
        assert view["teaching_consent"] is False
    with sessions() as session, pytest.raises(InvalidInput):
        cases.create_case(session, patient_token_hash=TOKEN_HASH, now=T0, teaching_consent="yes")  # type: ignore[arg-type]


def test_cases_from_before_the_question_read_as_no(empty_db_url: str) -> None:  # noqa: F811
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(empty_db_url).replace("%", "%%"))
    command.upgrade(config, "0005")
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient_cases (id, patient_token_hash, status, submitted_at, attempts,"
                f" unfamiliar) VALUES ('{'c' * 32}', '{TOKEN_HASH}', 'queued',"
                " '2026-12-01 09:00:00', 0, false)"
            )
        )
    engine.dispose()
    migrate_clinic(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        with make_sessionmaker(engine)() as session:
            view = cases.patient_view(session, "c" * 32, TOKEN_HASH).to_json()
        assert view["teaching_consent"] is False
        with engine.connect() as conn:  # and the migrations give exactly the models' schema
            assert compare_metadata(MigrationContext.configure(conn), ClinicBase.metadata) == []
    finally:
        engine.dispose()
