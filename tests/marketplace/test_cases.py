"""Case lifecycle as party 0 drives it, against a real migrated database."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from marketplace import cases, ledger
from marketplace.domain.ledger import TREASURY, escrow_account
from marketplace.domain.policy import DEFAULT_POLICY
from marketplace.domain.pricing import price_bounty
from marketplace.errors import CaseNotFound, InvalidInput, WrongPatientToken
from marketplace.storage.models import Case
from tests.marketplace.helpers import MODEL_SHA, T0, token_hash


def _predict(session, case_id, confidence=0.7, now=T0):
    return cases.record_prediction(
        session,
        case_id,
        label="tumor",
        confidence=confidence,
        backbone="resnet18",
        model_sha256=MODEL_SHA,
        now=now,
    )


def test_case_lifecycle_and_patient_view(session) -> None:
    pth = token_hash("patient-secret")
    case_id = cases.create_case(session, patient_token_hash=pth, now=T0)
    assert len(case_id) == 32
    view = cases.patient_view(session, case_id, pth)
    assert view.to_json() == {
        "case_id": case_id,
        "status": "queued",
        "submitted_at": T0.isoformat(),
        "prediction": None,
        "diagnosis": None,
    }
    assert _predict(session, case_id, now=T0 + timedelta(seconds=5)) is True
    view = cases.patient_view(session, case_id, pth)
    assert view.status == "open"
    assert view.to_json()["prediction"] == {
        "label": "tumor",
        "confidence": 0.7,
        "backbone": "resnet18",
    }
    case = session.get(Case, case_id)
    assert case.review_deadline == T0 + timedelta(seconds=5) + DEFAULT_POLICY.review_window


def test_prediction_is_idempotent_and_funds_escrow_once(session) -> None:
    case_id = cases.create_case(session, patient_token_hash=token_hash("p"), now=T0)
    assert _predict(session, case_id, confidence=0.6) is True
    assert _predict(session, case_id, confidence=0.99) is False
    case = session.get(Case, case_id)
    assert case.confidence == 0.6
    expected = price_bounty(0.6)
    assert ledger.balance(session, escrow_account(case_id)) == expected
    assert ledger.balance(session, TREASURY) == -expected
    assert sum(ledger.all_balances(session).values()) == 0


def test_wrong_token_and_unknown_case(session) -> None:
    case_id = cases.create_case(session, patient_token_hash=token_hash("right"), now=T0)
    with pytest.raises(WrongPatientToken):
        cases.patient_view(session, case_id, token_hash("wrong"))
    with pytest.raises(CaseNotFound):
        cases.patient_view(session, "0" * 32, token_hash("right"))
    with pytest.raises(CaseNotFound):
        _predict(session, "0" * 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"label": "maybe"},
        {"confidence": 0.3},
        {"confidence": 1.5},
        {"confidence": float("nan")},
        {"model_sha256": "xyz"},
        {"backbone": ""},
    ],
)
def test_bad_prediction_input_leaves_case_queued(session, kwargs) -> None:
    case_id = cases.create_case(session, patient_token_hash=token_hash("p"), now=T0)
    args = {
        "label": "tumor",
        "confidence": 0.8,
        "backbone": "resnet18",
        "model_sha256": MODEL_SHA,
        "now": T0,
    } | kwargs
    with pytest.raises(InvalidInput):
        cases.record_prediction(session, case_id, **args)
    assert cases.patient_view(session, case_id, token_hash("p")).status == "queued"
    assert ledger.all_balances(session) == {}


def test_failure_and_unfinished_ids(session) -> None:
    ids = [
        cases.create_case(
            session, patient_token_hash=token_hash("p"), now=T0 + timedelta(minutes=i)
        )
        for i in range(3)
    ]
    assert cases.unfinished_case_ids(session) == ids
    cases.record_inference_failure(session, ids[0], reason="party 1 unreachable", now=T0)
    _predict(session, ids[2])
    assert cases.unfinished_case_ids(session) == [ids[1]]
    view = cases.patient_view(session, ids[0], token_hash("p"))
    assert view.status == "failed"
    assert view.to_json()["failure_reason"] == "party 1 unreachable"
    # A failure report after the prediction does not undo it.
    cases.record_inference_failure(session, ids[2], reason="late", now=T0)
    assert cases.patient_view(session, ids[2], token_hash("p")).status == "open"


def test_create_case_rejects_plain_token(session) -> None:
    with pytest.raises(InvalidInput):
        cases.create_case(session, patient_token_hash="not-a-hash", now=T0)
    assert session.scalars(select(Case)).all() == []
