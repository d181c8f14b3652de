"""Pure domain rules: pricing, ledger, consensus, reputation, anonymization, limits and seats
(no I/O)."""

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
from marketplace.domain.limits import RateLimit, check_rate, may_open_claim
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.domain.pricing import PricingPolicy, escalated_bounty, price_bounty
from marketplace.domain.reputation import BetaReliability, ReputationRule, Tiers
from marketplace.domain.seats import seats_open

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


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), -1.0])
def test_bounty_rejects_out_of_range_confidence(bad) -> None:
    with pytest.raises(ValueError):
        price_bounty(bad)
    with pytest.raises(ValueError):
        price_bounty(bad, unfamiliar=True)


@given(pricing_policies(), st.floats(0.0, 0.5))
def test_screening_positive_below_half_is_priced_as_a_coin_flip(policy, c) -> None:
    # At a screening threshold t < 0.5 a "tumor" label can carry P(tumor) in [t, 0.5).
    assert price_bounty(c, policy) == price_bounty(0.5, policy)


@given(pricing_policies(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_unfamiliar_case_gets_the_ceiling_whatever_its_confidence(policy, c, other) -> None:
    assert price_bounty(c, policy, unfamiliar=True) == policy.ceiling
    assert price_bounty(c, policy, unfamiliar=True) >= price_bounty(other, policy)


def test_unfamiliar_case_lands_in_the_top_bounty_tier() -> None:
    tiers = DEFAULT_POLICY.reputation.tiers
    top = len(tiers.bounty_thresholds) - 1
    assert tiers.case_tier(price_bounty(0.99, DEFAULT_POLICY.pricing, unfamiliar=True)) == top
    assert tiers.case_tier(price_bounty(0.99, DEFAULT_POLICY.pricing)) < top


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
        "no",
        "unknown",  # predicted before model passports
    ]
    flagged = anonymize(
        settled_at=settled,
        backbone="lenet",
        model_label="tumor",
        confidence=0.4,  # a screening-positive label below 0.5
        diagnosis="tumor",
        reviewers=3,
        agreement=1.0,
        unfamiliar=True,
        model_version="lenet v2",
    )
    assert flagged.as_csv_values()[3] == "0.4-0.5" and flagged.as_csv_values()[-2:] == [
        "yes",
        "lenet v2",
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
        ).as_csv_values()[6]
        == "0.67"
    )


# ---- limits and seats ----------------------------------------------------------------------

WINDOW = timedelta(hours=1)


@given(
    st.integers(1, 6),
    st.lists(st.integers(0, 3 * 3600), max_size=40).map(sorted),
)
def test_a_rate_limit_never_lets_more_than_count_into_any_window(count, offsets) -> None:
    """Arrivals at sorted times: those admitted never number more than ``count`` in any window,
    and one is refused only when ``count`` admitted ones fill its window; the refusal's
    ``retry_after`` is exactly when it would be admitted."""
    limit = RateLimit(count, WINDOW)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    admitted: list[datetime] = []
    for offset in offsets:
        now = start + timedelta(seconds=offset)
        verdict = check_rate(admitted, now, limit)
        in_window = [t for t in admitted if t > now - WINDOW]
        assert verdict.allowed == (len(in_window) < count)
        if verdict.allowed:
            admitted.append(now)
            assert verdict.retry_after == timedelta(0)
        else:
            later = now + verdict.retry_after
            assert verdict.retry_after > timedelta(0)
            assert check_rate(admitted, later, limit).allowed
            assert not check_rate(admitted, later - timedelta(microseconds=1), limit).allowed
    for t in admitted:
        assert sum(t <= u < t + WINDOW for u in admitted) <= count


def test_rate_limits_and_the_claim_cap_refuse_nonsense() -> None:
    for count, window in ((0, WINDOW), (1, timedelta(0))):
        with pytest.raises(ValueError):
            RateLimit(count, window)
    assert may_open_claim(2, 3) and not may_open_claim(3, 3)
    for bad in ({"max_open_claims": 0}, {"claim_rate_limit": 0}, {"escalation_seats": -1}):
        with pytest.raises(ValueError):
            MarketPolicy(**bad)
    with pytest.raises(ValueError):
        MarketPolicy(registration_rate_window=timedelta(0))


@st.composite
def panel_rules(draw) -> PanelRule:
    panel_size = draw(st.integers(1, 9))
    return PanelRule(
        panel_size=panel_size,
        quorum=draw(st.integers(1, panel_size)),
        max_panel=draw(st.integers(panel_size, 15)),
    )


@given(panel_rules(), st.integers(0, 5), st.integers(0, 20))
def test_seats_grow_with_escalations_only_and_stay_under_the_panel_maximum(
    rule, per_escalation, level
) -> None:
    """Seats are a function of the escalation level alone (no vote goes in): never fewer
    than the first panel, never more than the most doctors who may see an image."""
    seats = seats_open(rule, level, per_escalation)
    assert rule.panel_size <= seats <= rule.max_panel
    assert seats_open(rule, level + 1, per_escalation) >= seats
    if per_escalation:
        assert seats_open(rule, rule.max_panel, per_escalation) == rule.max_panel


def test_default_seats_follow_the_panel_sizes_on_the_escalation_clock() -> None:
    policy = MarketPolicy()
    assert [policy.seats(level) for level in range(5)] == [3, 5, 7, 7, 7]
    assert policy.max_open_claims == 3
    assert policy.claim_rate == RateLimit(30, timedelta(hours=1))
    assert policy.registration_rate == RateLimit(20, timedelta(hours=1))


def test_each_tier_says_what_it_unlocks():
    tiers = Tiers(reputation_thresholds=(0, 120, 200), bounty_thresholds=(0, 2000, 3500))
    assert [tiers.bounty_limit(t) for t in range(3)] == [1999, 3499, None]
    assert [tiers.next_tier_reputation(t) for t in range(3)] == [120, 200, None]
    for tier in range(2):  # the limit is exactly the largest bounty the tier admits
        limit = tiers.bounty_limit(tier)
        assert limit is not None
        assert tiers.case_tier(limit) == tier and tiers.case_tier(limit + 1) == tier + 1
