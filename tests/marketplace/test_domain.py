"""Pure domain rules: pricing, ledger, consensus, reputation, anonymization (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from marketplace.domain import ledger
from marketplace.domain.anonymize import CSV_COLUMNS, anonymize, confidence_bucket
from marketplace.domain.consensus import (
    Ballot,
    PanelRule,
    commitment,
    evaluate,
    posterior,
    verify_receipt,
)
from marketplace.domain.pricing import PricingPolicy, escalated_bounty, price_bounty
from marketplace.domain.reputation import BetaReliability, ReputationRule, Tiers

confidences = st.floats(min_value=0.5, max_value=1.0, allow_nan=False)


@st.composite
def pricing_policies(draw) -> PricingPolicy:
    floor = draw(st.integers(1, 5_000))
    return PricingPolicy(
        base=draw(st.integers(1, 10_000)),
        steepness=draw(st.floats(0, 20, allow_nan=False)),
        floor=floor,
        ceiling=draw(st.integers(floor, 50_000)),
    )


# ---- pricing -------------------------------------------------------------------------------


@given(pricing_policies(), confidences, confidences)
def test_bounty_is_monotone_non_increasing_in_confidence(policy, a, b) -> None:
    low, high = min(a, b), max(a, b)
    assert price_bounty(low, policy) >= price_bounty(high, policy)


@given(pricing_policies(), confidences)
def test_bounty_is_bounded_integer(policy, c) -> None:
    bounty = price_bounty(c, policy)
    assert isinstance(bounty, int) and policy.floor <= bounty <= policy.ceiling


def test_bounty_curve_defaults() -> None:
    assert price_bounty(1.0) == 1000  # certain model: the base
    assert price_bounty(0.5) == 4000  # coin flip: base * (1 + steepness)
    assert price_bounty(0.75) == 2500
    assert price_bounty(0.5, PricingPolicy(base=1000, steepness=10, ceiling=6000)) == 6000


@pytest.mark.parametrize("bad", [0.49, 1.01, float("nan"), -1.0])
def test_bounty_rejects_out_of_range_confidence(bad) -> None:
    with pytest.raises(ValueError):
        price_bounty(bad)


@given(st.integers(1, 100_000), st.integers(0, 300), st.integers(1, 200_000))
def test_escalation_never_lowers_and_respects_cap(current, pct, cap) -> None:
    new = escalated_bounty(current, pct, cap)
    assert new >= current
    assert new <= max(cap, current)
    if pct and cap > current:
        assert new > current


# ---- ledger --------------------------------------------------------------------------------

accounts = st.sampled_from(["treasury", "escrow:a", "escrow:b", "doctor:1", "doctor:2", "doctor:3"])


@given(st.lists(st.tuples(accounts, accounts, st.integers(1, 10_000)), max_size=40))
def test_transfers_never_create_or_destroy_money(moves) -> None:
    balances: dict[str, int] = {}
    for src, dst, amount in moves:
        if src == dst:
            continue
        balances = ledger.apply(balances, ledger.transfer(src, dst, amount))
        assert sum(balances.values()) == 0


@given(st.integers(0, 1_000_000), st.integers(1, 9))
def test_payout_empties_escrow_exactly(escrow_amount, n) -> None:
    recipients = [ledger.doctor_account(str(i)) for i in range(n)]
    balances = {"treasury": -escrow_amount, "escrow:c": escrow_amount}
    postings = ledger.payout("escrow:c", escrow_amount, recipients)
    if postings:
        balances = ledger.apply(balances, postings)
    assert balances.get("escrow:c", 0) == 0
    shares = [balances.get(r, 0) for r in recipients]
    assert sum(shares) == escrow_amount and max(shares) - min(shares) <= 1
    assert sum(balances.values()) == 0


def test_unbalanced_or_fractional_postings_rejected() -> None:
    with pytest.raises(ledger.UnbalancedTransaction):
        ledger.check_balanced([ledger.Posting("a", 5), ledger.Posting("b", -4)])
    with pytest.raises(ledger.UnbalancedTransaction):
        ledger.check_balanced([ledger.Posting("a", 0.5), ledger.Posting("b", -0.5)])  # type: ignore[arg-type]
    with pytest.raises(ledger.UnbalancedTransaction):
        ledger.check_balanced([])
    with pytest.raises(ValueError):
        ledger.transfer("a", "b", 0)


# ---- consensus -----------------------------------------------------------------------------

labels = st.sampled_from(["tumor", "no_tumor"])


@given(labels, st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_receipts_bind_the_label(label, case_id, salt) -> None:
    receipt = commitment(case_id, label, salt)
    other = "no_tumor" if label == "tumor" else "tumor"
    assert verify_receipt(case_id, label, salt, receipt)
    assert not verify_receipt(case_id, other, salt, receipt)
    assert not verify_receipt(case_id + "x", label, salt, receipt)


def test_panel_waits_until_every_seat_voted() -> None:
    assert evaluate([Ballot("tumor")] * 2, 3, PanelRule()).action == "wait"


def test_unanimous_panel_settles_and_split_panel_widens() -> None:
    rule = PanelRule()
    out = evaluate([Ballot("tumor")] * 3, 3, rule)
    assert (out.action, out.label, out.agreement) == ("settle", "tumor", 1.0)
    split = [Ballot("tumor"), Ballot("no_tumor"), Ballot("tumor")]
    assert evaluate(split, 3, rule) == dataclasses.replace(evaluate(split, 3, rule), action="widen")
    assert evaluate(split, 3, rule).panel_size == 5
    # Plain count rule: 2 of 3 is a quorum.
    plain = PanelRule(use_reliability=False)
    assert evaluate(split, 3, plain).label == "tumor"


def test_reliable_dissenter_blocks_an_unreliable_majority() -> None:
    ballots = [Ballot("tumor", 0.55), Ballot("tumor", 0.55), Ballot("no_tumor", 0.97)]
    assert posterior(ballots)["no_tumor"] > 0.9
    assert evaluate(ballots, 3, PanelRule()).action == "widen"
    full = ballots + [Ballot("tumor", 0.55)] * 2 + [Ballot("no_tumor", 0.6)] * 2
    out = evaluate(full, 7, PanelRule())
    assert out.action == "settle"  # max panel reached: forced, still exactly one decision


@given(
    st.lists(st.tuples(labels, st.floats(0.01, 0.99)), min_size=1, max_size=9), st.integers(1, 9)
)
def test_evaluate_is_total_and_consistent(votes, panel) -> None:
    rule = PanelRule(panel_size=3, quorum=2, max_panel=9)
    assume(panel >= 3)
    ballots = [Ballot(label, r) for label, r in votes]
    out = evaluate(ballots, panel, rule)
    if len(ballots) < panel:
        assert out.action == "wait"
    elif out.action == "widen":
        assert panel < out.panel_size <= rule.max_panel
    else:
        assert out.action == "settle" and out.label in ("tumor", "no_tumor")
        agree = sum(b.label == out.label for b in ballots)
        assert out.agreement == agree / len(ballots) and agree >= 1


@given(st.lists(st.tuples(labels, st.floats(0.01, 0.99)), max_size=12))
def test_posterior_is_a_distribution_and_symmetric(votes) -> None:
    ballots = [Ballot(label, r) for label, r in votes]
    p = posterior(ballots)
    assert abs(p["tumor"] + p["no_tumor"] - 1) < 1e-9
    flipped = [
        Ballot("no_tumor" if b.label == "tumor" else "tumor", b.reliability) for b in ballots
    ]
    assert abs(posterior(flipped)["no_tumor"] - p["tumor"]) < 1e-9


def test_quorum_scales_with_panel() -> None:
    rule = PanelRule(panel_size=3, quorum=2)
    assert [rule.quorum_for(n) for n in (3, 5, 7)] == [2, 4, 5]
    with pytest.raises(ValueError):
        PanelRule(panel_size=3, quorum=4)


# ---- reputation ----------------------------------------------------------------------------


@given(st.integers(0, 10_000), st.booleans(), st.floats(0, 1))
def test_reputation_direction_and_floor(rep, agreed, difficulty) -> None:
    new = ReputationRule().apply(rep, agreed, difficulty)
    assert new >= 0
    assert (new > rep) if agreed else (new <= rep)


@given(st.floats(0, 1), st.floats(0, 1))
def test_difficulty_weighting(d1, d2) -> None:
    easy, hard = min(d1, d2), max(d1, d2)
    rule = ReputationRule()
    assert rule.delta(True, hard) >= rule.delta(True, easy)  # agreeing on hard cases earns more
    assert rule.delta(False, hard) >= rule.delta(False, easy)  # dissent on hard cases costs less


def test_tiers_gate_bounties() -> None:
    tiers = Tiers()
    assert [tiers.doctor_tier(r) for r in (0, 119, 120, 199, 200, 10_000)] == [0, 0, 1, 1, 2, 2]
    assert [tiers.case_tier(b) for b in (500, 1999, 2000, 3499, 3500)] == [0, 0, 1, 1, 2]
    assert tiers.admits(150, 1) and not tiers.admits(100, 1)


@given(st.integers(0, 50), st.integers(0, 50))
def test_beta_reliability(agree, dissent) -> None:
    beta = BetaReliability()
    r = beta.estimate(agree, dissent)
    assert 0 < r < 1
    assert beta.estimate(agree + 1, dissent) > r > beta.estimate(agree, dissent + 1)


# ---- anonymization -------------------------------------------------------------------------


@given(st.floats(0, 1, allow_nan=False))
def test_confidence_buckets_are_tenths(c) -> None:
    bucket = confidence_bucket(c)
    lo, hi = (float(x) for x in bucket.split("-"))
    assert round(hi - lo, 9) == 0.1 and lo <= c <= hi + 1e-9


def test_bucket_edges() -> None:
    assert [confidence_bucket(c) for c in (0.5, 0.7, 0.79, 0.8, 0.999, 1.0)] == [
        "0.5-0.6",
        "0.7-0.8",
        "0.7-0.8",
        "0.8-0.9",
        "0.9-1.0",
        "0.9-1.0",
    ]


def test_anonymize_keeps_only_public_coarse_fields() -> None:
    settled = datetime(2026, 11, 2, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # 1 Nov UTC
    record = anonymize(
        settled_at=settled,
        backbone="resnet18",
        model_label="tumor",
        confidence=0.8734,
        diagnosis="no_tumor",
        reviewers=5,
        agreement=0.8,
    )
    assert [f.name for f in dataclasses.fields(record)] == list(CSV_COLUMNS)
    assert record.day == date(2026, 11, 1)
    assert record.as_csv_values() == [
        "2026-11-01",
        "resnet18",
        "tumor",
        "0.8-0.9",
        "no_tumor",
        "5",
        "0.80",
    ]
    with pytest.raises(ValueError):
        anonymize(
            settled_at=settled.replace(tzinfo=None),
            backbone="b",
            model_label="tumor",
            confidence=0.9,
            diagnosis="tumor",
            reviewers=1,
            agreement=1.0,
        )


def test_utc_is_used() -> None:
    assert (
        anonymize(
            settled_at=datetime(2026, 1, 1, 23, 59, tzinfo=UTC),
            backbone="b",
            model_label="tumor",
            confidence=0.9,
            diagnosis="tumor",
            reviewers=3,
            agreement=2 / 3,
        ).as_csv_values()[-1]
        == "0.67"
    )
