"""Bounty pricing: a pure function of the model's calibrated confidence and its familiarity.

The less sure the model, the more a second opinion is worth. The confidence ``c`` is the
calibrated probability of the label the model revealed. At the default decision threshold
it lies in [0.5, 1]; uncertainty ``u = (1 - c) / 0.5`` maps it to [0, 1] and the bounty is

    bounty(c) = clamp(round(base * (1 + steepness * u)), floor, ceiling)

so a certain model (c = 1) pays ``base`` and a coin-flip (c = 0.5) pays
``base * (1 + steepness)``, always inside [floor, ceiling]. Amounts are integer credits.

Screening operating point: the model labels a case "tumor" once P(tumor) reaches a
threshold below 0.5 (to miss fewer tumours), so a "tumor" label can carry c < 0.5. Such a
case is one the model itself finds more likely healthy than not: ``u`` is capped at 1 and
it is priced as a coin flip, the top of the curve. ``c`` is never stretched or shifted,
so it stays calibrated.

An *unfamiliar* case (an image unlike the training data, flagged inside the MPC program)
has a confidence that means nothing: it is priced at the ceiling, the top bounty tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PricingPolicy:
    """Parameters of the bounty curve (integer credits)."""

    base: int = 1000
    steepness: float = 3.0
    floor: int = 500
    ceiling: int = 5000

    def __post_init__(self) -> None:
        if not (0 < self.floor <= self.ceiling):
            raise ValueError("need 0 < floor <= ceiling")
        if self.base <= 0 or self.steepness < 0 or not math.isfinite(self.steepness):
            raise ValueError("need base > 0 and finite steepness >= 0")


def uncertainty(confidence: float) -> float:
    """Map the calibrated confidence of the revealed label, in [0, 1], to uncertainty in
    [0, 1]: linear on [0.5, 1], and 1 (a coin flip) below 0.5."""
    if not (0.0 <= confidence <= 1.0) or math.isnan(confidence):
        raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
    return min(1.0, (1.0 - confidence) / 0.5)


def price_bounty(
    confidence: float, policy: PricingPolicy = PricingPolicy(), *, unfamiliar: bool = False
) -> int:
    """Bounty in credits for a case whose model confidence is ``confidence``.

    ``unfamiliar``: the confidence is not trusted, the case gets the ceiling.
    """
    if unfamiliar:
        uncertainty(confidence)  # still refuse a malformed confidence
        return policy.ceiling
    raw = policy.base * (1.0 + policy.steepness * uncertainty(confidence))
    return max(policy.floor, min(policy.ceiling, round(raw)))


def escalated_bounty(current: int, raise_percent: int, cap: int) -> int:
    """Raise an overdue case's bounty by ``raise_percent`` (at least 1 credit), never above ``cap``."""
    if current <= 0 or raise_percent < 0:
        raise ValueError("bounty must be positive and raise_percent non-negative")
    raised = current + max(1, current * raise_percent // 100) if raise_percent else current
    return max(current, min(cap, raised))
