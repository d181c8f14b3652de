"""The clinic keeps the unfamiliarity bit: the patient sees it, the marketplace is told."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from marketplace.errors import InvalidInput
from marketplace.messages import CaseOpened
from marketplace.storage import make_engine, make_sessionmaker
from predictor.clinic import cases
from predictor.clinic.models import ClinicOutbox, PatientCase
from predictor.clinic.store import migrate_clinic
from tests.marketplace.conftest import empty_db_url  # noqa: F401  (registers the fixture)

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
TOKEN_HASH = "ab" * 32


@pytest.fixture
def sessions(empty_db_url: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    migrate_clinic(empty_db_url)
    engine = make_engine(empty_db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _predicted(sessions, **prediction) -> str:
    with sessions() as session:
        case_id = cases.create_case(session, patient_token_hash=TOKEN_HASH, now=T0)
        assert cases.record_prediction(
            session, case_id, backbone="lenet", model_sha256="cd" * 32,
            now=T0 + timedelta(seconds=5), **prediction,
        )  # fmt: skip
    return case_id


def _opened(sessions, case_id: str) -> CaseOpened:
    with sessions() as session:
        bodies = [json.loads(r.body) if isinstance(r.body, str) else r.body
                  for r in session.scalars(select(ClinicOutbox))]  # fmt: skip
    return next(CaseOpened.parse(b) for b in bodies if b["case_id"] == case_id)


def test_an_unfamiliar_case_tells_the_patient_and_the_marketplace(sessions) -> None:
    case_id = _predicted(sessions, label="tumor", confidence=0.97, unfamiliar=True)
    with sessions() as session:
        view = cases.patient_view(session, case_id, TOKEN_HASH).to_json()
    assert view["unfamiliar"] is True and view["prediction"]["unfamiliar"] is True
    assert view["unfamiliar_note"] == cases.UNFAMILIAR_NOTE
    assert "not sure about this kind of image" in cases.UNFAMILIAR_NOTE
    assert _opened(sessions, case_id).unfamiliar is True


def test_a_familiar_screening_positive_keeps_its_calibrated_probability(sessions) -> None:
    case_id = _predicted(sessions, label="tumor", confidence=0.38)
    with sessions() as session:
        view = cases.patient_view(session, case_id, TOKEN_HASH).to_json()
    assert view["unfamiliar"] is False and "unfamiliar_note" not in view
    assert view["prediction"]["confidence"] == 0.38
    opened = _opened(sessions, case_id)
    assert (opened.unfamiliar, opened.confidence, opened.model_label) == (False, 0.38, "tumor")


@pytest.mark.parametrize(
    "bad",
    [
        {"label": "no_tumor", "confidence": 0.4},  # only a screening positive goes below 0.5
        {"label": "tumor", "confidence": 1.2},
        {"label": "tumor", "confidence": 0.9, "unfamiliar": "yes"},
    ],
)
def test_bad_predictions_are_refused_and_change_nothing(sessions, bad) -> None:
    with sessions() as session:
        case_id = cases.create_case(session, patient_token_hash=TOKEN_HASH, now=T0)
        with pytest.raises(InvalidInput):
            cases.record_prediction(
                session, case_id, backbone="lenet", model_sha256="cd" * 32, now=T0, **bad
            )
    with sessions() as session:
        case = session.get(PatientCase, case_id)
        assert case.status == "queued" and case.unfamiliar is False
        assert session.scalars(select(ClinicOutbox)).all() == []
