"""Reputation: integer points that unlock bounty tiers, and a Beta model of reliability.

* Reputation moves up when a doctor agrees with the settled diagnosis and down
  when they dissent, weighted by difficulty (the model's uncertainty): agreeing
  on a hard case earns more, dissenting on a hard case costs less.
* Reliability (probability of voting the true label) is the mean of a Beta
  posterior over agreements and dissents, starting from an optimistic prior
  (a licensed doctor is usually right). It weights votes in ``consensus``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReputationRule:
    """Point changes per settled case; reputation never drops below zero."""

    start: int = 100
    gain: int = 6
    loss: int = 6

    def delta(self, agreed: bool, difficulty: float) -> int:
        """Points for one vote on a case of ``difficulty`` in [0, 1]."""
        if not (0.0 <= difficulty <= 1.0):
            raise ValueError("difficulty must be in [0, 1]")
        if agreed:
            return round(self.gain * (1.0 + difficulty))
        return -round(self.loss * (2.0 - difficulty))

    def apply(self, reputation: int, agreed: bool, difficulty: float) -> int:
        return max(0, reputation + self.delta(agreed, difficulty))


@dataclass(frozen=True)
class Tiers:
    """Reputation unlocks bounty tiers: tier ``k`` needs ``reputation_thresholds[k]`` points
    and admits cases whose bounty tier (from ``bounty_thresholds``) is at most ``k``."""

    reputation_thresholds: tuple[int, ...] = (0, 120, 200)
    bounty_thresholds: tuple[int, ...] = (0, 2000, 3500)

    def __post_init__(self) -> None:
        for seq in (self.reputation_thresholds, self.bounty_thresholds):
            if not seq or seq[0] != 0 or list(seq) != sorted(set(seq)):
                raise ValueError("thresholds must start at 0 and strictly increase")
        if len(self.reputation_thresholds) != len(self.bounty_thresholds):
            raise ValueError("need one bounty threshold per reputation tier")

    @staticmethod
    def _tier(value: int, thresholds: tuple[int, ...]) -> int:
        return max(i for i, t in enumerate(thresholds) if value >= t)

    def doctor_tier(self, reputation: int) -> int:
        return self._tier(max(0, reputation), self.reputation_thresholds)

    def case_tier(self, bounty: int) -> int:
        return self._tier(max(0, bounty), self.bounty_thresholds)

    def admits(self, reputation: int, case_min_tier: int) -> bool:
        return self.doctor_tier(reputation) >= case_min_tier

    def bounty_limit(self, tier: int) -> int | None:
        """Highest bounty a doctor of ``tier`` may claim (None: every bounty)."""
        return (
            self.bounty_thresholds[tier + 1] - 1 if tier + 1 < len(self.bounty_thresholds) else None
        )

    def next_tier_reputation(self, tier: int) -> int | None:
        """Reputation that opens the next tier (None: already the highest)."""
        return (
            self.reputation_thresholds[tier + 1]
            if tier + 1 < len(self.reputation_thresholds)
            else None
        )


@dataclass(frozen=True)
class BetaReliability:
    """Beta(prior_agree + agreements, prior_dissent + dissents) reliability estimate."""

    prior_agree: float = 4.0
    prior_dissent: float = 1.0

    def estimate(self, agreements: float, dissents: float) -> float:
        a = self.prior_agree + max(0.0, agreements)
        b = self.prior_dissent + max(0.0, dissents)
        return a / (a + b)


@dataclass(frozen=True)
class ReputationPolicy:
    rule: ReputationRule = field(default_factory=ReputationRule)
    tiers: Tiers = field(default_factory=Tiers)
    reliability: BetaReliability = field(default_factory=BetaReliability)
