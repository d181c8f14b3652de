"""All tunable market parameters in one frozen value, shared by both party processes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from marketplace.domain.consensus import PanelRule
from marketplace.domain.pricing import PricingPolicy
from marketplace.domain.reputation import ReputationPolicy

ENV_PREFIX = "CRYPTO_DOCTOR_"


@dataclass(frozen=True)
class MarketPolicy:
    """Pricing, panel, reputation and escalation rules of the review market."""

    pricing: PricingPolicy = field(default_factory=PricingPolicy)
    panel: PanelRule = field(default_factory=PanelRule)
    reputation: ReputationPolicy = field(default_factory=ReputationPolicy)
    review_window: timedelta = timedelta(hours=24)
    escalation_raise_percent: int = 50
    escalation_cap: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MarketPolicy:
        """Build from ``CRYPTO_DOCTOR_*`` variables (pass ``os.environ`` at process start)."""

        def get(name: str, default: str) -> str:
            return environ.get(ENV_PREFIX + name, default)

        d = cls()
        return cls(
            pricing=PricingPolicy(
                base=int(get("BOUNTY_BASE", str(d.pricing.base))),
                steepness=float(get("BOUNTY_STEEPNESS", str(d.pricing.steepness))),
                floor=int(get("BOUNTY_FLOOR", str(d.pricing.floor))),
                ceiling=int(get("BOUNTY_CEILING", str(d.pricing.ceiling))),
            ),
            panel=PanelRule(
                panel_size=int(get("PANEL_SIZE", str(d.panel.panel_size))),
                quorum=int(get("QUORUM", str(d.panel.quorum))),
                widen_step=int(get("WIDEN_STEP", str(d.panel.widen_step))),
                max_panel=int(get("MAX_PANEL", str(d.panel.max_panel))),
                min_posterior=float(get("MIN_POSTERIOR", str(d.panel.min_posterior))),
                use_reliability=get("USE_RELIABILITY", "1") not in ("0", "false", "no"),
            ),
            review_window=timedelta(
                seconds=float(get("REVIEW_WINDOW_S", str(d.review_window.total_seconds())))
            ),
            escalation_raise_percent=int(
                get("ESCALATION_RAISE_PERCENT", str(d.escalation_raise_percent))
            ),
            escalation_cap=int(get("ESCALATION_CAP", str(d.escalation_cap))),
        )


DEFAULT_POLICY = MarketPolicy()
