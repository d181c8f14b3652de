"""Randomised market runs on a real database: the ledger invariants hold after every step."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from marketplace import ledger, review
from marketplace.domain.ledger import TREASURY, escrow_account
from marketplace.domain.policy import DEFAULT_POLICY
from marketplace.errors import MarketplaceError
from marketplace.storage.models import Case, Claim, ResearchRow
from tests.marketplace.flows import make_doctors, open_case
from tests.marketplace.helpers import T0


def _check(session) -> None:
    balances = ledger.all_balances(session)
    assert sum(balances.values()) == 0  # money is never created or lost
    cases = session.scalars(select(Case)).all()
    issued = 0
    for case in cases:
        escrow = balances.get(escrow_account(case.id), 0)
        issued += case.bounty
        if case.status == "settled":
            assert escrow == 0  # fully paid out
            assert case.research_row_id is not None
        else:
            assert escrow == case.bounty  # funded exactly, escalations included
        # Seats follow the escalation level only (never the votes), and none is ever freed.
        assert 0 <= case.claims_count <= DEFAULT_POLICY.seats(case.escalation_level)
        claims = session.scalar(
            select(func.count()).select_from(Claim).where(Claim.case_id == case.id)
        )
        assert claims == case.claims_count
    assert balances.get(TREASURY, 0) == -issued
    settled = sum(c.status == "settled" for c in cases)
    assert len(session.scalars(select(ResearchRow)).all()) == settled


@pytest.mark.parametrize("seed", [1, 2])
def test_random_market_keeps_ledger_invariants(session, seed: int) -> None:
    rng = random.Random(seed)
    doctors = [d for d, _ in make_doctors(session, 6)] + [
        d for d, _ in make_doctors(session, 3, reputation=250)
    ]
    case_ids = [open_case(session, confidence=rng.uniform(0.5, 1.0)) for _ in range(5)]
    truth = {c: rng.choice(["tumor", "no_tumor"]) for c in case_ids}
    now = T0
    for _ in range(200):
        now += timedelta(minutes=rng.randint(1, 120))
        action = rng.random()
        doctor, case_id = rng.choice(doctors), rng.choice(case_ids)
        try:
            if action < 0.5:
                review.claim_case(session, doctor, case_id, now=now)
            elif action < 0.95:
                panel = session.scalars(
                    select(Claim.doctor_id).where(Claim.case_id == case_id)
                ).all()
                doctor = rng.choice(panel) if panel else doctor
                wrong = "no_tumor" if truth[case_id] == "tumor" else "tumor"
                label = truth[case_id] if rng.random() < 0.85 else wrong
                review.cast_vote(session, doctor, case_id, label=label, note=None, now=now)
            else:
                review.escalate_overdue(session, now=now + timedelta(days=1))
        except MarketplaceError:
            pass  # refused actions must leave everything intact
        _check(session)
    assert sum(session.get(Case, c).status == "settled" for c in case_ids) >= 2
