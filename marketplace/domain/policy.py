"""All tunable market parameters in one frozen value, shared by both party processes.

The domain reads no environment: each process builds its policy once from its settings
(``marketplace.service.settings.POLICY_FLAGS`` makes it configurable) and passes it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from marketplace.domain.consensus import PanelRule
from marketplace.domain.limits import RateLimit
from marketplace.domain.pricing import PricingPolicy
from marketplace.domain.reputation import ReputationPolicy
from marketplace.domain.seats import seats_open


@dataclass(frozen=True)
class MarketPolicy:
    """Pricing, panel, reputation and escalation rules of the review market, and the limits
    on what one doctor (claims) or everyone together (self-registration) may do."""

    pricing: PricingPolicy = field(default_factory=PricingPolicy)
    panel: PanelRule = field(default_factory=PanelRule)
    reputation: ReputationPolicy = field(default_factory=ReputationPolicy)
    #: A case unsettled this long after it opened (or was last escalated) is escalated. It is
    #: also the unvoted-claim timeout: a seat-holder who has not voted by then is joined by
    #: ``escalation_seats`` new seats; their own seat is never freed.
    review_window: timedelta = timedelta(hours=24)
    escalation_raise_percent: int = 50
    escalation_cap: int = 10_000
    #: Seats added at each escalation, whoever voted (up to ``panel.max_panel`` in all).
    escalation_seats: int = 2
    #: Claims a doctor may hold without having voted on them (on unsettled cases).
    max_open_claims: int = 3
    #: Claims per doctor in any ``claim_rate_window``.
    claim_rate_limit: int = 30
    claim_rate_window: timedelta = timedelta(hours=1)
    #: Self-registrations, all clients together, in any ``registration_rate_window``.
    registration_rate_limit: int = 20
    registration_rate_window: timedelta = timedelta(hours=1)
    #: Credits the clinic owes per diagnosed case, paid into the royalty pool of the model
    #: version that predicted it (``domain.royalties``); 0 books no fee.
    royalty_fee_per_case: int = 100

    def __post_init__(self) -> None:
        if self.royalty_fee_per_case < 0:
            raise ValueError("royalty_fee_per_case must be >= 0")
        if self.review_window <= timedelta(0):
            raise ValueError("review_window must be positive")
        if self.escalation_seats < 0:
            raise ValueError("escalation_seats must be >= 0")
        if self.max_open_claims < 1:
            raise ValueError("max_open_claims must be >= 1")
        _ = (self.claim_rate, self.registration_rate)  # RateLimit checks count and window

    @property
    def claim_rate(self) -> RateLimit:
        return RateLimit(self.claim_rate_limit, self.claim_rate_window)

    @property
    def registration_rate(self) -> RateLimit:
        return RateLimit(self.registration_rate_limit, self.registration_rate_window)

    def seats(self, escalation_level: int) -> int:
        """Seats of a case at this escalation level (see ``domain.seats``)."""
        return seats_open(self.panel, escalation_level, self.escalation_seats)


DEFAULT_POLICY = MarketPolicy()
