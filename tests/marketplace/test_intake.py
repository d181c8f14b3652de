"""A case reaches the market from the clinic's ``case.opened``, against a real migrated database."""

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError

from marketplace import intake, ledger
from marketplace.domain.ledger import TREASURY, escrow_account
from marketplace.domain.policy import DEFAULT_POLICY
from marketplace.domain.pricing import price_bounty
from marketplace.domain.status import CaseStatus
from marketplace.errors import InvalidInput
from marketplace.messages import CaseOpened, MessageError
from marketplace.storage.models import Case
from tests.marketplace.flows import case_opened, to_clinic
from tests.marketplace.helpers import MODEL_SHA, T0

ARRIVED = T0 + timedelta(minutes=3)


def test_case_opened_puts_a_priced_funded_case_in_the_pool(session) -> None:
    message = case_opened(confidence=0.7, now=T0)
    assert intake.open_case_now(session, message, now=ARRIVED) is True
    case = session.get(Case, message.case_id)
    assert case.status is CaseStatus.OPEN
    assert (case.submitted_at, case.predicted_at) == (T0, T0)
    assert (case.model_label, case.confidence, case.backbone, case.model_sha256) == (
        "tumor",
        0.7,
        "resnet18",
        MODEL_SHA,
    )
    bounty = price_bounty(0.7)
    assert case.bounty == bounty
    assert case.min_tier == DEFAULT_POLICY.reputation.tiers.case_tier(bounty)
    assert case.reviewers_needed == DEFAULT_POLICY.panel.panel_size and case.claims_count == 0
    # The review window starts when the case reaches the market, not when it was predicted.
    assert case.review_deadline == ARRIVED + DEFAULT_POLICY.review_window
    assert ledger.balance(session, escrow_account(message.case_id)) == bounty
    assert ledger.balance(session, TREASURY) == -bounty
    assert to_clinic(session) == []  # opening a case tells the clinic nothing


def test_a_second_case_opened_for_the_same_case_changes_nothing(session) -> None:
    first = case_opened(confidence=0.6)
    assert intake.open_case_now(session, first, now=T0) is True
    again = replace(first, confidence=0.99, model_label="no_tumor")
    assert intake.open_case_now(session, again, now=T0 + timedelta(hours=1)) is False
    case = session.get(Case, first.case_id)
    assert (case.confidence, case.model_label, case.review_deadline) == (
        0.6,
        "tumor",
        T0 + DEFAULT_POLICY.review_window,
    )
    expected = price_bounty(0.6)
    assert ledger.balance(session, escrow_account(first.case_id)) == expected
    assert ledger.balance(session, TREASURY) == -expected
    assert sum(ledger.all_balances(session).values()) == 0


def test_an_unfamiliar_case_is_priced_at_the_top_tier_whatever_its_confidence(session) -> None:
    message = replace(case_opened(confidence=0.99), unfamiliar=True)
    assert CaseOpened.parse(message.body()) == message
    assert intake.open_case_now(session, message, now=T0) is True
    case = session.get(Case, message.case_id)
    tiers = DEFAULT_POLICY.reputation.tiers
    assert case.unfamiliar is True and case.bounty == DEFAULT_POLICY.pricing.ceiling
    assert case.min_tier == len(tiers.bounty_thresholds) - 1
    assert case.bounty > price_bounty(0.99)
    assert ledger.balance(session, escrow_account(message.case_id)) == case.bounty


def test_a_screening_positive_below_half_is_priced_as_a_coin_flip(session) -> None:
    """At the screening threshold a "tumor" label can carry P(tumor) < 0.5."""
    message = case_opened(confidence=0.35, label="tumor")
    assert intake.open_case_now(session, message, now=T0) is True
    case = session.get(Case, message.case_id)
    assert case.bounty == price_bounty(0.5) and case.unfamiliar is False


def test_a_message_without_the_flag_is_familiar_and_a_bad_flag_is_refused() -> None:
    body = case_opened().body()
    del body["unfamiliar"]
    assert CaseOpened.parse(body).unfamiliar is False
    with pytest.raises(MessageError):
        CaseOpened.parse(case_opened().body() | {"unfamiliar": "yes"})


def test_the_body_on_the_wire_opens_the_same_case(session) -> None:
    message = case_opened(confidence=0.8)
    parsed = CaseOpened.parse(message.body())
    assert parsed == message
    assert intake.open_case_now(session, parsed, now=T0) is True
    assert session.get(Case, message.case_id).confidence == 0.8


@pytest.mark.parametrize(
    "change",
    [
        {"model_label": "maybe"},
        {"confidence": 0.3, "model_label": "no_tumor"},
        {"confidence": -0.1},
        {"confidence": 1.5},
        {"confidence": float("nan")},
        {"confidence": True},
        {"model_sha256": "xyz"},
        {"model_sha256": MODEL_SHA.upper()},
        {"backbone": ""},
        {"backbone": "x" * 65},
        {"case_id": "../../etc"},
        {"case_id": "A" * 32},
    ],
)
def test_bad_input_is_refused_and_stores_nothing(session, change) -> None:
    message = replace(case_opened(), **change)
    with pytest.raises(InvalidInput):
        intake.open_case_now(session, message, now=T0)
    assert session.scalar(select(func.count()).select_from(Case)) == 0
    assert ledger.all_balances(session) == {}


def test_naive_time_is_refused(session) -> None:
    with pytest.raises(InvalidInput):
        intake.open_case_now(session, case_opened(), now=T0.replace(tzinfo=None))
    naive = replace(case_opened(), predicted_at=T0.replace(tzinfo=None))
    with pytest.raises(InvalidInput):
        intake.open_case_now(session, naive, now=T0)


def test_open_case_leaves_the_commit_to_its_caller(session_factory, session) -> None:
    """Inside the inbox's unit of work: a rollback there takes the case and its escrow back."""
    message = case_opened()
    with session_factory() as inbox_session:
        assert intake.open_case(inbox_session, message, now=T0) is True
        inbox_session.rollback()
    assert session.get(Case, message.case_id) is None
    assert ledger.all_balances(session) == {}


def test_the_market_never_stores_a_patient_side_status(session) -> None:
    message = case_opened()
    intake.open_case_now(session, message, now=T0)
    case = session.get(Case, message.case_id)
    for status in (CaseStatus.QUEUED, CaseStatus.FAILED):
        case.status = status
        with pytest.raises(StatementError, match="never"):
            session.flush()
        session.rollback()
        case = session.get(Case, message.case_id)
    assert case.status is CaseStatus.OPEN


def test_the_research_row_of_an_unfamiliar_case_records_the_flag(session) -> None:
    from marketplace import research, review
    from tests.marketplace.flows import make_doctors

    flagged = replace(case_opened(confidence=0.97), unfamiliar=True)
    familiar = case_opened(confidence=0.97)
    for message in (flagged, familiar):
        assert intake.open_case_now(session, message, now=T0) is True
        for doctor_id, _ in make_doctors(session, 3, reputation=200):  # top tier
            review.claim_case(session, doctor_id, message.case_id, now=ARRIVED)
            review.cast_vote(
                session, doctor_id, message.case_id, label="tumor", note=None, now=ARRIVED
            )
    rows = research.unpublished_rows(session, limit=10)
    assert [row["unfamiliar"] for row in rows] == ["yes", "no"]
