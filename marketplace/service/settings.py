"""Settings of the doctor service: one frozen value built once from CLI flags and env.

``parse_settings(MarketplaceSettings)`` gives every field a flag and a ``CRYPTO_DOCTOR_*``
variable; the env names below keep those of earlier releases. The image-link key and the
operator token are secrets: environment only, never a flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.settings import DEFAULT_DB_URL, flag, nested
from marketplace.domain.policy import MarketPolicy

#: Field metadata making a nested ``MarketPolicy`` configurable in both parties:
#: ``--bounty-base`` / ``CRYPTO_DOCTOR_BOUNTY_BASE`` (also ``_STEEPNESS``, ``_FLOOR``,
#: ``_CEILING``), ``PANEL_SIZE``, ``QUORUM``, ``WIDEN_STEP``, ``MAX_PANEL``, ``MIN_POSTERIOR``,
#: ``USE_RELIABILITY``, ``REVIEW_WINDOW_S``, ``ESCALATION_RAISE_PERCENT``, ``ESCALATION_CAP``.
#: Reputation rules are not configurable: their defaults stand.
POLICY_FLAGS = nested("", pricing="bounty_", panel="")


@dataclass(frozen=True)
class MarketplaceSettings:
    """Everything the doctor service (party 1, :8081) needs, passed down explicitly."""

    db_url: str = field(default=DEFAULT_DB_URL, metadata=flag("SQLite or PostgreSQL URL"))
    host: str = field(default="127.0.0.1", metadata=flag("listen address", env="MARKETPLACE_HOST"))
    port: int = field(default=8081, metadata=flag("listen port", env="MARKETPLACE_PORT"))
    image_link_secret: bytes = field(
        default=b"",
        metadata=flag(
            "image-link HMAC key shared with party 0", env="LINK_SECRET_HEX", secret=True
        ),
    )
    patient_base_url: str = field(
        default="http://127.0.0.1:8080", metadata=flag("party 0's URL, where image links point")
    )
    image_link_ttl_s: int = field(default=600, metadata=flag("seconds an image link stays valid"))
    policy: MarketPolicy = field(default_factory=MarketPolicy, metadata=POLICY_FLAGS)
    escalation_interval_s: float = field(
        default=30.0, metadata=flag("seconds between passes over overdue cases")
    )
    csv_poll_interval_s: float = field(
        default=1.0, metadata=flag("seconds between database polls of a live /decisions.csv")
    )
    metrics_interval_s: float = field(
        default=5.0, metadata=flag("seconds between reads of the database gauges of /metrics")
    )
    allow_registration: bool = field(default=True, metadata=flag("doctors may self-register"))
    db_workers: int = field(default=4, metadata=flag("database worker threads"))
    operator_token: str = field(
        default="", metadata=flag("bearer token for /metrics from other hosts", secret=True)
    )

    def __post_init__(self) -> None:
        if not self.image_link_secret:
            raise ValueError("image_link_secret must be set (shared with party 0)")
        if min(self.image_link_ttl_s, self.escalation_interval_s, self.metrics_interval_s) <= 0:
            raise ValueError("ttl and intervals must be positive")
        if self.csv_poll_interval_s <= 0 or self.db_workers <= 0:
            raise ValueError("csv_poll_interval_s and db_workers must be positive")
