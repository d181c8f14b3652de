"""All tunable market parameters in one frozen value, shared by both party processes.

The domain reads no environment: each process builds its policy once from its settings
(``marketplace.service.settings.POLICY_FLAGS`` makes it configurable) and passes it down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from marketplace.domain.consensus import PanelRule
from marketplace.domain.pricing import PricingPolicy
from marketplace.domain.reputation import ReputationPolicy


@dataclass(frozen=True)
class MarketPolicy:
    """Pricing, panel, reputation and escalation rules of the review market."""

    pricing: PricingPolicy = field(default_factory=PricingPolicy)
    panel: PanelRule = field(default_factory=PanelRule)
    reputation: ReputationPolicy = field(default_factory=ReputationPolicy)
    review_window: timedelta = timedelta(hours=24)
    escalation_raise_percent: int = 50
    escalation_cap: int = 10_000


DEFAULT_POLICY = MarketPolicy()
