"""Settings of the doctor service: one frozen value built from CLI flags with env fallbacks."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from marketplace.doctors import DB_URL_ENV, DEFAULT_DB_URL
from marketplace.domain.policy import ENV_PREFIX, MarketPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarketplaceSettings:
    """Everything the doctor service (party 1, :8081) needs, passed down explicitly."""

    db_url: str = DEFAULT_DB_URL
    host: str = "127.0.0.1"
    port: int = 8081
    image_link_secret: bytes = b""
    patient_base_url: str = "http://127.0.0.1:8080"
    image_link_ttl_s: int = 600
    policy: MarketPolicy = field(default_factory=MarketPolicy)
    escalation_interval_s: float = 30.0
    csv_poll_interval_s: float = 1.0
    allow_registration: bool = True
    db_workers: int = 4

    def __post_init__(self) -> None:
        if not self.image_link_secret:
            raise ValueError("image_link_secret must be set (shared with party 0)")
        if self.image_link_ttl_s <= 0 or self.escalation_interval_s <= 0:
            raise ValueError("ttl and intervals must be positive")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> MarketplaceSettings:
        """Build from ``CRYPTO_DOCTOR_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(ENV_PREFIX + name, default)

        d = _defaults()
        secret_hex = get("LINK_SECRET_HEX", "")
        try:
            secret = bytes.fromhex(secret_hex)
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}LINK_SECRET_HEX must be hex") from exc
        values: dict[str, object] = {
            "db_url": env.get(DB_URL_ENV, d["db_url"]),
            "host": get("MARKETPLACE_HOST", d["host"]),
            "port": int(get("MARKETPLACE_PORT", str(d["port"]))),
            "image_link_secret": secret,
            "patient_base_url": get("PATIENT_BASE_URL", d["patient_base_url"]),
            "image_link_ttl_s": int(get("IMAGE_LINK_TTL_S", str(d["image_link_ttl_s"]))),
            "policy": MarketPolicy.from_env(env),
            "escalation_interval_s": float(
                get("ESCALATION_INTERVAL_S", str(d["escalation_interval_s"]))
            ),
            "csv_poll_interval_s": float(get("CSV_POLL_INTERVAL_S", str(d["csv_poll_interval_s"]))),
            "allow_registration": get("ALLOW_REGISTRATION", "1") not in ("0", "false", "no"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["image_link_secret"]:
            log.warning(
                "no %sLINK_SECRET_HEX: using a random one; party 0 will reject image links",
                ENV_PREFIX,
            )
            values["image_link_secret"] = secrets.token_bytes(32)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> MarketplaceSettings:
        """CLI flags (``python -m marketplace.service --port 8081 --db-url ...``) over env."""
        parser = argparse.ArgumentParser(prog="python -m marketplace.service")
        parser.add_argument("--db-url")
        parser.add_argument("--host")
        parser.add_argument("--port", type=int)
        parser.add_argument("--patient-base-url")
        parser.add_argument(
            "--link-secret-hex", help="image-link HMAC key shared with party 0 (prefer the env var)"
        )
        parser.add_argument("--escalation-interval-s", type=float)
        parser.add_argument("--csv-poll-interval-s", type=float)
        args = parser.parse_args(argv)
        secret = bytes.fromhex(args.link_secret_hex) if args.link_secret_hex else None
        return cls.from_env(
            environ,
            db_url=args.db_url,
            host=args.host,
            port=args.port,
            patient_base_url=args.patient_base_url,
            image_link_secret=secret,
            escalation_interval_s=args.escalation_interval_s,
            csv_poll_interval_s=args.csv_poll_interval_s,
        )

    def with_port(self, port: int) -> MarketplaceSettings:
        return replace(self, port=port)


def _defaults() -> dict[str, object]:
    return {
        "db_url": DEFAULT_DB_URL,
        "host": "127.0.0.1",
        "port": 8081,
        "patient_base_url": "http://127.0.0.1:8080",
        "image_link_ttl_s": 600,
        "escalation_interval_s": 30.0,
        "csv_poll_interval_s": 1.0,
    }
