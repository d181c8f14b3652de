"""Doctor accounts: registration, token authentication, profile; plus the demo CLI.

    python -m marketplace.doctors [--db-url URL] create --name "Dr A" \
        --specialty neuroradiology [--wallet 0x...] [--reputation N]

prints ``{"doctor_id": ..., "token": ...}`` once; only the token's sha256 is stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.settings import add_flags, flag, settings_from
from infra.tokens import hash_token, new_token
from marketplace import ledger, rate_limits
from marketplace.domain.ledger import doctor_account
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.errors import DoctorNotFound, InvalidInput
from marketplace.storage.engine import DEFAULT_MARKET_DB_URL
from marketplace.storage.models import Doctor
from marketplace.storage.unit import read_only, unit_of_work

_WALLET = re.compile(r"0x[0-9a-fA-F]{40}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}")


@dataclass(frozen=True)
class DoctorProfile:
    """What a doctor sees about themself: reputation, tier, estimated reliability, balance."""

    doctor_id: str
    display_name: str
    specialty: str
    wallet_address: str | None
    reputation: int
    tier: int
    #: What the tier unlocks: the highest bounty it admits (None: all), and the reputation
    #: that opens the next tier (None: already the highest).
    bounty_limit: int | None
    next_tier_reputation: int | None
    reliability: float
    balance: int


@dataclass(frozen=True)
class CliSettings:
    """Settings of the doctors CLI (flags over ``CRYPTO_DOCTOR_*`` env)."""

    db_url: str = field(
        default=DEFAULT_MARKET_DB_URL,
        metadata=flag("the marketplace's store (SQLite or PostgreSQL URL)"),
    )


def _clean(value: str, what: str, max_len: int) -> str:
    value = (value or "").strip()
    if not value or len(value) > max_len or any(ord(ch) < 32 for ch in value):
        raise InvalidInput(f"{what} must be 1-{max_len} printable characters")
    return value


def _add_doctor(
    session: Session,
    *,
    display_name: str,
    specialty: str,
    now: datetime,
    wallet_address: str | None,
    reputation: int | None,
    policy: MarketPolicy,
) -> tuple[str, str]:
    name = _clean(display_name, "display_name", 120)
    spec = _clean(specialty, "specialty", 80)
    if wallet_address is not None and wallet_address != "":
        if not _WALLET.fullmatch(wallet_address):
            raise InvalidInput("wallet_address must be 0x followed by 40 hex digits")
    else:
        wallet_address = None
    if reputation is not None and (not isinstance(reputation, int) or reputation < 0):
        raise InvalidInput("reputation must be a non-negative integer")
    doctor_id = uuid.uuid4().hex
    token = new_token()
    session.add(
        Doctor(
            id=doctor_id,
            display_name=name,
            specialty=spec,
            wallet_address=wallet_address,
            token_hash=hash_token(token),
            reputation=policy.reputation.rule.start if reputation is None else reputation,
            beta_agree=0.0,
            beta_dissent=0.0,
            created_at=now,
        )
    )
    return doctor_id, token


@unit_of_work
def create_doctor(
    session: Session,
    *,
    display_name: str,
    specialty: str,
    now: datetime,
    wallet_address: str | None = None,
    reputation: int | None = None,
    policy: MarketPolicy = DEFAULT_POLICY,
) -> tuple[str, str]:
    """Create a doctor as the operator (the CLI, tools; no rate limit); returns
    ``(doctor_id, api_token)`` - the token is shown only here."""
    return _add_doctor(
        session,
        display_name=display_name,
        specialty=specialty,
        now=now,
        wallet_address=wallet_address,
        reputation=reputation,
        policy=policy,
    )


@unit_of_work
def register_doctor(
    session: Session,
    *,
    display_name: str,
    specialty: str,
    now: datetime,
    wallet_address: str | None = None,
    policy: MarketPolicy = DEFAULT_POLICY,
) -> tuple[str, str]:
    """Self-registration (``POST /api/doctors``): a new doctor at the starting reputation,
    within ``policy.registration_rate`` for all clients together (counted in the store, so
    across processes and restarts); raises :class:`RateLimited` beyond it."""
    rate_limits.take(
        session, rate_limits.REGISTRATION, policy.registration_rate, now, "self-registrations"
    )
    return _add_doctor(
        session,
        display_name=display_name,
        specialty=specialty,
        now=now,
        wallet_address=wallet_address,
        reputation=None,
        policy=policy,
    )


@read_only
def authenticate(session: Session, token: str) -> str | None:
    """Doctor id for an API token, or None (lookup by hash: the token is never stored)."""
    if not _TOKEN.fullmatch(token or ""):
        return None
    return session.scalar(select(Doctor.id).where(Doctor.token_hash == hash_token(token)))


@read_only
def doctor_profile(
    session: Session, doctor_id: str, policy: MarketPolicy = DEFAULT_POLICY
) -> DoctorProfile:
    """A doctor's own profile (their tier and reliability under ``policy``)."""
    doctor = session.get(Doctor, doctor_id)
    if doctor is None:
        raise DoctorNotFound(doctor_id)
    rep = policy.reputation
    tier = rep.tiers.doctor_tier(doctor.reputation)
    return DoctorProfile(
        doctor_id=doctor.id,
        display_name=doctor.display_name,
        specialty=doctor.specialty,
        wallet_address=doctor.wallet_address,
        reputation=doctor.reputation,
        tier=tier,
        bounty_limit=rep.tiers.bounty_limit(tier),
        next_tier_reputation=rep.tiers.next_tier_reputation(tier),
        reliability=round(rep.reliability.estimate(doctor.beta_agree, doctor.beta_dissent), 3),
        balance=ledger.balance(session, doctor_account(doctor.id)),
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (admin-free bootstrap of demo doctors)."""
    from marketplace.storage import make_engine, make_sessionmaker, migrate

    parser = argparse.ArgumentParser(prog="python -m marketplace.doctors")
    add_flags(parser, CliSettings)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a doctor and print its id and API token")
    create.add_argument("--name", required=True)
    create.add_argument("--specialty", required=True)
    create.add_argument("--wallet", default=None)
    create.add_argument("--reputation", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        settings = settings_from(CliSettings, args)
    except ValueError as exc:
        parser.error(str(exc))

    migrate(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        with make_sessionmaker(engine)() as session:
            doctor_id, token = create_doctor(
                session,
                display_name=args.name,
                specialty=args.specialty,
                wallet_address=args.wallet,
                reputation=args.reputation,
                now=datetime.now(UTC),
            )
    except InvalidInput as exc:
        parser.error(str(exc))
    finally:
        engine.dispose()
    json.dump({"doctor_id": doctor_id, "token": token}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
