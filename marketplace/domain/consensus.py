"""Blind consensus: sealed-vote receipts and the settlement rule of a review panel.

Votes are hidden until settlement; each vote's receipt is a hash commitment
``sha256(case | label | salt)`` that anyone can check once votes are disclosed.

Settlement rule (evaluated only once the whole panel has voted, so no early
vote can leak through the timing of a settlement):

* a label settles when at least the quorum (e.g. 2 of 3, scaled to wider panels)
  voted for it **and**, when reliability weighting is on, the posterior
  probability of that label given every vote and each doctor's estimated
  reliability (one-coin Dawid-Skene model) reaches ``min_posterior``;
* otherwise the panel widens by ``widen_step`` reviewers, up to ``max_panel``;
* a full ``max_panel`` that still disagrees settles on the label with the highest
  posterior (or the plain count when weighting is off) - still one settlement.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

LABELS = ("tumor", "no_tumor")


def validate_label(label: str) -> str:
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return label


def commitment(case_id: str, label: str, salt: str) -> str:
    """Receipt for a sealed vote: binds the label without revealing it (salt is 256 bits)."""
    return hashlib.sha256(f"crypto-doctor-vote|{case_id}|{label}|{salt}".encode()).hexdigest()


def verify_receipt(case_id: str, label: str, salt: str, receipt: str) -> bool:
    """Check a disclosed (label, salt) against a receipt in constant time."""
    return hmac.compare_digest(commitment(case_id, label, salt), receipt)


@dataclass(frozen=True)
class PanelRule:
    """How many reviewers a case needs and when their votes settle it."""

    panel_size: int = 3
    quorum: int = 2
    widen_step: int = 2
    max_panel: int = 7
    min_posterior: float = 0.9
    use_reliability: bool = True

    def __post_init__(self) -> None:
        if not (1 <= self.quorum <= self.panel_size <= self.max_panel):
            raise ValueError("need 1 <= quorum <= panel_size <= max_panel")
        if self.widen_step < 1:
            raise ValueError("widen_step must be >= 1")
        if not (0.5 <= self.min_posterior < 1.0):
            raise ValueError("min_posterior must be in [0.5, 1)")

    def quorum_for(self, size: int) -> int:
        """Quorum scaled to a widened panel, keeping the same agreeing fraction."""
        return max(self.quorum, math.ceil(size * self.quorum / self.panel_size))


@dataclass(frozen=True)
class Ballot:
    """A disclosed vote as the rule sees it: label plus the voter's estimated reliability."""

    label: str
    reliability: float = 0.8


@dataclass(frozen=True)
class Outcome:
    """What to do with a panel: wait, widen to ``panel_size``, or settle on ``label``."""

    action: Literal["wait", "widen", "settle"]
    panel_size: int
    label: str | None = None
    posterior: float | None = None
    agreement: float | None = None


def _clip(p: float) -> float:
    return min(0.99, max(0.01, p))


def _weight_clip(r: float) -> float:
    """Reliability used as a vote weight: below 0.5 counts as zero, never as a reversed vote."""
    return min(0.99, max(0.5, r))


def posterior(ballots: Sequence[Ballot], prior: float = 0.5) -> dict[str, float]:
    """P(true label | ballots) under the one-coin Dawid-Skene model.

    A doctor with reliability r votes the true label with probability r, so each
    vote adds ``log(r / (1 - r))`` to its label's log-odds. Reliabilities below
    0.5 are treated as 0.5 (no evidence): the market never turns a vote around.
    """
    log_odds = math.log(_clip(prior) / (1 - _clip(prior)))
    for ballot in ballots:
        r = _weight_clip(ballot.reliability)
        weight = math.log(r / (1 - r))
        log_odds += weight if validate_label(ballot.label) == LABELS[0] else -weight
    p_first = 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, log_odds))))
    return {LABELS[0]: p_first, LABELS[1]: 1.0 - p_first}


def _counts(ballots: Sequence[Ballot]) -> dict[str, int]:
    counts = dict.fromkeys(LABELS, 0)
    for ballot in ballots:
        counts[validate_label(ballot.label)] += 1
    return counts


def evaluate(ballots: Sequence[Ballot], panel_size: int, rule: PanelRule) -> Outcome:
    """Decide a panel's next step from its (sealed) ballots, ordered by vote time."""
    if len(ballots) < panel_size:
        return Outcome("wait", panel_size)
    counts = _counts(ballots)
    post = posterior(ballots)
    n = len(ballots)

    def settle(label: str) -> Outcome:
        return Outcome("settle", panel_size, label, post[label], counts[label] / n)

    needed = rule.quorum_for(panel_size)
    for label in LABELS:
        if counts[label] >= needed and (
            not rule.use_reliability or post[label] >= rule.min_posterior
        ):
            return settle(label)
    if panel_size + rule.widen_step <= rule.max_panel:
        return Outcome("widen", panel_size + rule.widen_step)
    return settle(_forced_label(ballots, counts, post, rule.use_reliability))


def _forced_label(
    ballots: Sequence[Ballot], counts: dict[str, int], post: dict[str, float], weighted: bool
) -> str:
    """Final tie-break at a full panel: posterior, then count, then the earliest vote."""
    keys = [(post[label] if weighted else 0.0, counts[label]) for label in LABELS]
    if keys[0] != keys[1]:
        return LABELS[0] if keys[0] > keys[1] else LABELS[1]
    return ballots[0].label
