"""Settings of the marketplace service: one frozen value built once from CLI flags and env.

``parse_settings(MarketplaceSettings)`` gives every field a flag and a ``CRYPTO_DOCTOR_*``
variable; the env names below keep those of earlier releases. The marketplace's signing key
and the operator token are secrets: environment only, never a flag. No secret is shared with
the clinic: it knows the marketplace's *public* key, the marketplace knows the clinic's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.messaging import check_public_key, public_key
from infra.settings import flag, nested
from marketplace.domain.policy import MarketPolicy
from marketplace.passport_links import check_view_url
from marketplace.storage.engine import DEFAULT_MARKET_DB_URL

#: Field metadata making a nested ``MarketPolicy`` configurable in both parties:
#: ``--bounty-base`` / ``CRYPTO_DOCTOR_BOUNTY_BASE`` (also ``_STEEPNESS``, ``_FLOOR``,
#: ``_CEILING``), ``PANEL_SIZE``, ``QUORUM``, ``WIDEN_STEP``, ``MAX_PANEL``, ``MIN_POSTERIOR``,
#: ``USE_RELIABILITY``, ``REVIEW_WINDOW_S``, ``ESCALATION_RAISE_PERCENT``, ``ESCALATION_CAP``,
#: ``ESCALATION_SEATS``, ``MAX_OPEN_CLAIMS``, ``CLAIM_RATE_LIMIT``, ``CLAIM_RATE_WINDOW_S``,
#: ``REGISTRATION_RATE_LIMIT``, ``REGISTRATION_RATE_WINDOW_S``, ``ROYALTY_FEE_PER_CASE``.
#: Reputation rules are not configurable: their defaults stand.
POLICY_FLAGS = nested("", pricing="bounty_", panel="")


@dataclass(frozen=True)
class MarketplaceSettings:
    """Everything the marketplace service (:8081) needs, passed down explicitly.

    It runs as its own process (``python -m marketplace.service``) with its own store
    (``db_url``): co-hosted with party 1's operator by default, movable to a third operator.
    """

    db_url: str = field(
        default=DEFAULT_MARKET_DB_URL, metadata=flag("the marketplace's own store (SQLAlchemy URL)")
    )
    host: str = field(default="127.0.0.1", metadata=flag("listen address", env="MARKETPLACE_HOST"))
    port: int = field(default=8081, metadata=flag("listen port", env="MARKETPLACE_PORT"))
    signing_key: str = field(
        default="",
        repr=False,
        metadata=flag(
            "the marketplace's Ed25519 private key (hex): signs its messages and image links",
            env="MARKET_KEY",
            secret=True,
        ),
    )
    clinic_public_key: str = field(
        default="",
        metadata=flag(
            "the clinic's Ed25519 public key (hex); without it POST /messages refuses everything"
        ),
    )
    patient_base_url: str = field(
        default="http://127.0.0.1:8080",
        metadata=flag("the clinic's URL: messages go to its /messages, image links point there"),
    )
    passport_view_url: str = field(
        default="http://127.0.0.1:8082",
        metadata=flag(
            "the Ocean service's URL for doctors' browsers: case answers link to its "
            "/passports/<passport_id> page; empty: no passport links"
        ),
    )
    policy: MarketPolicy = field(default_factory=MarketPolicy, metadata=POLICY_FLAGS)
    escalation_interval_s: float = field(
        default=30.0, metadata=flag("seconds between passes over overdue cases")
    )
    csv_poll_interval_s: float = field(
        default=1.0, metadata=flag("seconds between database polls of a live /decisions.csv")
    )
    courier_poll_s: float = field(
        default=0.5, metadata=flag("seconds between looks at the outbox when nothing wakes it")
    )
    courier_max_backoff_s: float = field(
        default=30.0, metadata=flag("longest wait between retries while the clinic is down")
    )
    events_poll_s: float = field(
        default=2.0, metadata=flag("seconds between looks at a doctor's view for /api/events")
    )
    events_keepalive_s: float = field(
        default=15.0, metadata=flag("seconds between keep-alive comments on /api/events")
    )
    metrics_interval_s: float = field(
        default=5.0, metadata=flag("seconds between reads of the database gauges of /metrics")
    )
    access_log: bool = field(default=False, metadata=flag("log one line per HTTP request"))
    allow_registration: bool = field(default=True, metadata=flag("doctors may self-register"))
    db_workers: int = field(default=4, metadata=flag("database worker threads"))
    operator_token: str = field(
        default="",
        repr=False,
        metadata=flag(
            "bearer token for /metrics from other hosts and for /decisions.csv", secret=True
        ),
    )

    def __post_init__(self) -> None:
        if not self.signing_key:
            raise ValueError("signing_key must be set (CRYPTO_DOCTOR_MARKET_KEY)")
        public_key(self.signing_key)  # ValueError naming the expected form
        if self.clinic_public_key:
            check_public_key(self.clinic_public_key)
        check_view_url(self.passport_view_url)
        if min(self.courier_poll_s, self.courier_max_backoff_s) <= 0:
            raise ValueError("courier_poll_s and courier_max_backoff_s must be positive")
        if min(self.escalation_interval_s, self.metrics_interval_s) <= 0:
            raise ValueError("intervals must be positive")
        if min(self.events_poll_s, self.events_keepalive_s) <= 0:
            raise ValueError("events_poll_s and events_keepalive_s must be positive")
        if self.csv_poll_interval_s <= 0 or self.db_workers <= 0:
            raise ValueError("csv_poll_interval_s and db_workers must be positive")

    @property
    def market_public_key(self) -> str:
        """The marketplace's public key (hex): the clinic verifies messages and links with it."""
        return public_key(self.signing_key)
