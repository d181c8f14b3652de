"""A doctor's track record over time, rebuilt from settled cases: reputation and earnings.

Reputation is stored only as its current value; each settled vote moved it by
``ReputationRule.delta(agreed, difficulty)``, so walking the settled votes back from the
present gives every earlier value. ``ReputationRule.apply`` floors at zero: where a loss hit
that floor, the value before it is taken as ``-delta``, the highest one consistent with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from marketplace.domain.reputation import ReputationRule


@dataclass(frozen=True)
class SettledVote:
    """One of the doctor's votes on a settled case, and what it earned."""

    case_id: str
    settled_at: datetime
    agreed: bool
    difficulty: float
    paid: int


@dataclass(frozen=True)
class TrackPoint:
    """The doctor's standing right after one case settled."""

    case_id: str
    settled_at: datetime
    agreed: bool
    reputation: int
    earned: int


def track(
    votes_oldest_first: Sequence[SettledVote],
    reputation_now: int,
    earned_before: int,
    rule: ReputationRule,
) -> tuple[int, list[TrackPoint]]:
    """The reputation before the first of ``votes`` and a point after each, oldest first;
    ``earned`` adds each case's payout to ``earned_before`` (earned on older cases)."""
    after = reputation_now
    reputations: list[int] = []
    for vote in reversed(votes_oldest_first):
        reputations.append(after)
        delta = rule.delta(vote.agreed, vote.difficulty)
        after = -delta if after == 0 and delta < 0 else after - delta
    reputations.reverse()
    points: list[TrackPoint] = []
    earned = earned_before
    for vote, reputation in zip(votes_oldest_first, reputations, strict=True):
        earned += vote.paid
        points.append(TrackPoint(vote.case_id, vote.settled_at, vote.agreed, reputation, earned))
    return after, points
