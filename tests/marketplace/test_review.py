"""Doctor-side flows on a real database: pool, claims, sealed votes, settlement, escalation."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from marketplace import doctors, ledger, research, review
from marketplace.domain.consensus import verify_receipt
from marketplace.domain.ledger import TREASURY, doctor_account, escrow_account
from marketplace.domain.policy import DEFAULT_POLICY
from marketplace.domain.pricing import price_bounty
from marketplace.errors import (
    AlreadyClaimed,
    AlreadyVoted,
    CaseNotClaimable,
    CaseNotOpen,
    InvalidInput,
    NotOnPanel,
    NotSettled,
    TierTooLow,
)
from marketplace.storage.models import Case, ResearchRow
from tests.marketplace.flows import make_doctors, open_case, to_clinic
from tests.marketplace.helpers import T0

T1 = T0 + timedelta(minutes=10)
LATE = T0 + DEFAULT_POLICY.review_window + timedelta(seconds=1)


def _panel(session, case_id, docs, labels, now=T1):
    receipts = []
    for doctor_id, _ in docs:
        review.claim_case(session, doctor_id, case_id, now=now)
    for (doctor_id, _), label in zip(docs, labels, strict=True):
        receipts.append(
            review.cast_vote(session, doctor_id, case_id, label=label, note=None, now=now)
        )
    return receipts


def test_three_doctor_panel_settles_and_pays_exactly_the_escrow(session) -> None:
    case_id = open_case(session, confidence=0.95)
    bounty = price_bounty(0.95)
    docs = make_doctors(session, 3)
    receipts = _panel(session, case_id, docs, ["tumor", "tumor", "tumor"])
    assert session.get(Case, case_id).status == "settled"
    # What the patient will see: one case.settled for the clinic, with the diagnosis.
    assert to_clinic(session, "case.settled") == [
        {
            "type": "case.settled",
            "case_id": case_id,
            "diagnosis": "tumor",
            "settled_at": T1.isoformat(),
            "reviewers": 3,
            "agreement": 1.0,
        }
    ]
    # And one seat.granted per claim, each before the settlement.
    assert [(m["type"], m.get("doctor_id")) for m in to_clinic(session)] == [
        *(("seat.granted", d) for d, _ in docs),
        ("case.settled", None),
    ]
    paid = [ledger.balance(session, doctor_account(d)) for d, _ in docs]
    assert sum(paid) == bounty and max(paid) - min(paid) <= 1
    assert ledger.balance(session, escrow_account(case_id)) == 0
    assert sum(ledger.all_balances(session).values()) == 0
    # Every participant can check every receipt against the disclosed votes.
    disclosed = review.disclosure(session, docs[0][0], case_id)
    assert sorted(r.receipt for r in receipts) == [v.receipt for v in disclosed.votes]
    assert all(verify_receipt(case_id, v.label, v.salt, v.receipt) for v in disclosed.votes)
    assert disclosed.diagnosis == "tumor" and disclosed.settled_at == T1
    # Reputation up for all three, one research row.
    for doctor_id, _ in docs:
        assert doctors.doctor_profile(session, doctor_id).reputation > 100
    assert session.scalar(select(func.count()).select_from(ResearchRow)) == 1
    history = review.history(session, docs[1][0])
    assert history[0].agreed and history[0].paid == paid[1]
    assert (history[0].your_label, history[0].reviewers) == ("tumor", 3)


def test_dissent_pays_only_agreeing_and_lowers_dissenter(session) -> None:
    case_id = open_case(session, confidence=0.9)
    docs = make_doctors(session, 3)
    # New doctors have reliability 0.8: a 2-1 split has posterior 0.8 < 0.9, so the panel widens.
    _panel(session, case_id, docs, ["tumor", "no_tumor", "tumor"])
    case = session.get(Case, case_id)
    assert case.status == "under_review" and case.reviewers_needed == 5
    more = make_doctors(session, 2)
    # Widening opens no seat (a reopened seat would tell everyone the votes disagreed): the
    # two more reviewers take the seats of the next escalation, which come whatever the votes.
    assert review.list_pool(session, more[0][0]) == []
    with pytest.raises(CaseNotClaimable):
        review.claim_case(session, more[0][0], case_id, now=T1)
    assert to_clinic(session, "case.settled") == []  # a widening tells the clinic nothing
    assert review.escalate_overdue(session, now=LATE) == [case_id]
    _panel(session, case_id, more, ["tumor", "tumor"], now=LATE)
    (settled,) = to_clinic(session, "case.settled")
    assert settled == {
        "type": "case.settled",
        "case_id": case_id,
        "diagnosis": "tumor",
        "settled_at": LATE.isoformat(),
        "reviewers": 5,
        "agreement": 0.8,
    }
    assert len(to_clinic(session, "seat.granted")) == 5
    dissenter = doctors.doctor_profile(session, docs[1][0])
    assert dissenter.balance == 0 and dissenter.reputation < 100
    agreeing = [ledger.balance(session, doctor_account(d)) for d, _ in docs[::2] + more]
    escalated = session.get(Case, case_id).bounty
    assert sum(agreeing) == escalated > price_bounty(0.9)
    assert sum(ledger.all_balances(session).values()) == 0


def test_votes_are_sealed_and_single(session) -> None:
    case_id = open_case(session)
    (a, _), (b, _), (c, _) = make_doctors(session, 3)
    for d in (a, b, c):
        review.claim_case(session, d, case_id, now=T1)
    review.cast_vote(session, a, case_id, label="no_tumor", note="secret-note", now=T1)
    with pytest.raises(AlreadyVoted):
        review.cast_vote(session, a, case_id, label="tumor", note=None, now=T1)
    with pytest.raises(NotSettled):
        review.disclosure(session, a, case_id)
    with pytest.raises(InvalidInput):
        review.cast_vote(session, b, case_id, label="glioma", note=None, now=T1)
    # Nothing a doctor can list reveals the other votes.
    for d in (a, b, c):
        text = repr(
            [review.my_claims(session, d), review.list_pool(session, d), review.history(session, d)]
        )
        assert "secret-note" not in text and "no_tumor" not in text
    # Before settlement the clinic hears of seats only: nothing that depends on a vote.
    told = to_clinic(session)
    assert [m["type"] for m in told] == ["seat.granted"] * 3
    assert "secret-note" not in repr(told) and "no_tumor" not in repr(told)


def test_claims_are_limited_by_panel_and_tier(session) -> None:
    easy = open_case(session, confidence=0.99)
    hard = open_case(session, confidence=0.55)  # bounty above tier 0
    docs = make_doctors(session, 4)
    ((senior, _),) = make_doctors(session, 1, reputation=250)
    assert [c.case_id for c in review.list_pool(session, docs[0][0])] == [easy]
    assert [c.case_id for c in review.list_pool(session, senior)] == [hard, easy]
    with pytest.raises(TierTooLow):
        review.claim_case(session, docs[0][0], hard, now=T1)
    for d, _ in docs[:3]:
        review.claim_case(session, d, easy, now=T1)
    with pytest.raises(AlreadyClaimed):
        review.claim_case(session, docs[0][0], easy, now=T1)
    with pytest.raises(CaseNotClaimable):
        review.claim_case(session, docs[3][0], easy, now=T1)
    assert review.list_pool(session, docs[3][0]) == []
    with pytest.raises(NotOnPanel):
        review.cast_vote(session, docs[3][0], easy, label="tumor", note=None, now=T1)
    # Only the three seats taken reach the clinic; refused claims post nothing.
    granted = to_clinic(session, "seat.granted")
    assert [(m["case_id"], m["doctor_id"]) for m in granted] == [(easy, d) for d, _ in docs[:3]]
    assert all(m["granted_at"] == T1.isoformat() for m in granted)


def test_escalation_raises_bounty_admits_a_lower_tier_and_adds_seats_freeing_none(
    session,
) -> None:
    case_id = open_case(session, confidence=0.6)  # tier 1 case
    bounty = price_bounty(0.6)
    juniors = make_doctors(session, 4)
    (voter, _), (stale, _) = make_doctors(session, 2, reputation=150)
    review.claim_case(session, voter, case_id, now=T1)
    review.claim_case(session, stale, case_id, now=T1)
    review.cast_vote(session, voter, case_id, label="no_tumor", note=None, now=T1)
    assert review.list_pool(session, juniors[0][0]) == []
    assert review.escalate_overdue(session, now=T1) == []  # not overdue yet
    assert review.escalate_overdue(session, now=LATE) == [case_id]
    case = session.get(Case, case_id)
    assert case.bounty == bounty * 3 // 2 and case.escalation_level == 1
    assert ledger.balance(session, escrow_account(case_id)) == case.bounty
    assert ledger.balance(session, TREASURY) == -case.bounty
    # The unvoted claim timed out into two new seats; no seat was freed, the voter's or not.
    assert case.claims_count == 2 and case.status == "under_review"
    review.require_claim(session, stale, case_id)  # keeps the seat, may still vote
    assert [c.case_id for c in review.list_pool(session, juniors[0][0])] == [case_id]
    for d, _ in juniors[:3]:
        review.claim_case(session, d, case_id, now=LATE)
    with pytest.raises(CaseNotClaimable):  # 3 seats + 2 of the escalation, all taken
        review.claim_case(session, juniors[3][0], case_id, now=LATE)
    assert len(to_clinic(session, "seat.granted")) == 5
    for d, _ in juniors[:2]:
        review.cast_vote(session, d, case_id, label="no_tumor", note=None, now=LATE)
    assert session.get(Case, case_id).status == "settled"
    paid = [
        ledger.balance(session, doctor_account(d)) for d in (voter, juniors[0][0], juniors[1][0])
    ]
    assert sum(paid) == case.bounty
    # Settled cases are never escalated again and take no more votes.
    assert review.escalate_overdue(session, now=LATE + timedelta(days=5)) == []
    with pytest.raises(AlreadyVoted):
        review.cast_vote(session, juniors[0][0], case_id, label="tumor", note=None, now=LATE)
    with pytest.raises(CaseNotOpen):
        review.cast_vote(session, stale, case_id, label="tumor", note=None, now=LATE)


def test_vote_on_settled_case_refused_for_late_claimer(session) -> None:
    case_id = open_case(session)
    docs = make_doctors(session, 3)
    _panel(session, case_id, docs, ["tumor"] * 3)
    with pytest.raises(CaseNotClaimable):
        review.claim_case(session, make_doctors(session, 1)[0][0], case_id, now=T1)
    with pytest.raises(CaseNotOpen):
        review.require_claim(session, docs[0][0], case_id)
    with pytest.raises(AlreadyVoted):
        review.cast_vote(session, docs[0][0], case_id, label="tumor", note=None, now=T1)
    assert len(to_clinic(session, "case.settled")) == 1  # settled once, told once


def test_research_rows_publish_cycle(session) -> None:
    for _ in range(2):
        case_id = open_case(session, confidence=0.87, label="no_tumor")
        _panel(session, case_id, make_doctors(session, 3), ["no_tumor"] * 3)
    rows = research.unpublished_rows(session, limit=10)
    assert [set(r) for r in rows] == [
        {
            "row_id",
            "day",
            "backbone",
            "model_label",
            "confidence_bucket",
            "diagnosis",
            "reviewers",
            "agreement",
            "unfamiliar",
            "model_version",
        }
    ] * 2
    assert rows[0] | {"row_id": 0} == {
        "row_id": 0,
        "day": "2026-11-01",
        "backbone": "resnet18",
        "model_label": "no_tumor",
        "confidence_bucket": "0.8-0.9",
        "diagnosis": "no_tumor",
        "reviewers": "3",
        "agreement": "1.00",
        "unfamiliar": "no",
        "model_version": "unknown",  # the clinic's message named no version
    }
    research.mark_published(session, [rows[0]["row_id"]], ref="0xabc", now=T1)
    assert [r["row_id"] for r in research.unpublished_rows(session, limit=10)] == [
        rows[1]["row_id"]
    ]


def test_concurrent_claims_and_votes_settle_exactly_once(session_factory, session) -> None:
    """Six doctors race for three seats, then the three panelists vote at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    case_id = open_case(session, confidence=0.9)
    docs = make_doctors(session, 6)

    def claim(doctor_id):
        with session_factory() as s:
            try:
                review.claim_case(s, doctor_id, case_id, now=T1)
                return doctor_id
            except (CaseNotClaimable, AlreadyClaimed):
                return None

    def vote(doctor_id):
        with session_factory() as s:
            return review.cast_vote(s, doctor_id, case_id, label="tumor", note=None, now=T1)

    with ThreadPoolExecutor(6) as pool:
        seated = [d for d in pool.map(claim, [d for d, _ in docs]) if d]
        assert len(seated) == 3
        receipts = list(pool.map(vote, seated))
    assert len({r.receipt for r in receipts}) == 3
    assert len(to_clinic(session, "seat.granted")) == 3
    assert [m["case_id"] for m in to_clinic(session, "case.settled")] == [case_id]
    case = session.get(Case, case_id)
    assert case.status == "settled" and case.claims_count == 3 and case.reviewers == 3
    assert session.scalar(select(func.count()).select_from(ResearchRow)) == 1
    paid = sum(ledger.balance(session, doctor_account(d)) for d in seated)
    assert paid == price_bounty(0.9) and ledger.balance(session, escrow_account(case_id)) == 0
