"""Hospital accounts: enrolment, token authentication and each hospital's royalty statement.

A hospital of the federation is known by its pseudonym (the one in the contribution files)
and holds the ledger account ``hospital:<pseudonym>``. The operator enrols it
(``python -m marketplace.royalties enrol``), which prints its API token once; only the
token's sha256 is stored. With it the hospital reads its own statement, and no other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from infra.tokens import hash_token, new_token
from marketplace import ledger
from marketplace.domain import royalties
from marketplace.errors import HospitalNotFound, InvalidInput, NotYourStatement
from marketplace.storage.models import (
    Hospital,
    HospitalShare,
    LedgerEntry,
    ModelContribution,
    RoyaltyPayout,
)
from marketplace.storage.unit import read_only, unit_of_work

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,128}")


@unit_of_work
def enrol_hospital(session: Session, *, pseudonym: str, display_name: str, now: datetime) -> str:
    """Enrol a hospital (operator only); returns its API token, shown only here."""
    if not royalties.valid_pseudonym(pseudonym):
        raise InvalidInput("pseudonym must be 1-64 letters, digits, '.', '_' or '-'")
    name = (display_name or "").strip()
    if not name or len(name) > 120 or any(ord(ch) < 32 for ch in name):
        raise InvalidInput("display_name must be 1-120 printable characters")
    if session.get(Hospital, pseudonym) is not None:
        raise InvalidInput(f"hospital {pseudonym!r} is already enrolled")
    token = new_token()
    session.add(
        Hospital(
            pseudonym=pseudonym, display_name=name, token_hash=hash_token(token), created_at=now
        )
    )
    return token


@read_only
def authenticate(session: Session, token: str) -> str | None:
    """The hospital's pseudonym for an API token, or None (looked up by the token's hash)."""
    if not _TOKEN.fullmatch(token or ""):
        return None
    return session.scalar(
        select(Hospital.pseudonym).where(Hospital.token_hash == hash_token(token))
    )


@dataclass(frozen=True)
class VersionContribution:
    """One model version in a hospital's statement."""

    model_version: str
    method: str
    utility: str
    share: float  # what payouts use
    shapley: float | None  # raw, may be negative
    shapley_se: float | None
    loss_delta_tokens: float | None
    data_size: int | None
    rank: int  # among the version's hospitals, by raw Shapley (1 = most)
    hospitals: int
    pool_funded: int  # credits ever paid into the version's pool
    pool_unpaid: int  # credits in the pool now, waiting for the next payout


@dataclass(frozen=True)
class PayoutLine:
    period_end: datetime
    model_version: str
    pool: int
    amount: int
    paid_at: datetime


@dataclass(frozen=True)
class Statement:
    """What a hospital sees about itself: contributions, payouts, balance (credits)."""

    pseudonym: str
    display_name: str
    contributions: list[VersionContribution]
    payouts: list[PayoutLine]
    total_paid: int
    balance: int


def _funded(session: Session, account: str) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.account == account, LedgerEntry.amount > 0
        )
    )
    return int(total or 0)


@read_only
def statement(session: Session, pseudonym: str, *, reader: str | None = None) -> Statement:
    """The statement of ``pseudonym``; ``reader`` (an authenticated hospital) must be it."""
    if reader is not None and reader != pseudonym:
        raise NotYourStatement("a hospital reads only its own statement")
    hospital = session.get(Hospital, pseudonym)
    if hospital is None:
        raise HospitalNotFound(pseudonym)
    contributions: list[VersionContribution] = []
    mine = session.execute(
        select(HospitalShare, ModelContribution)
        .join(ModelContribution, ModelContribution.model_version == HospitalShare.model_version)
        .where(HospitalShare.pseudonym == pseudonym)
        .order_by(ModelContribution.imported_at, ModelContribution.model_version)
    ).all()
    for share, model in mine:
        everyone = session.scalars(
            select(HospitalShare).where(HospitalShare.model_version == model.model_version)
        ).all()
        ranks = royalties.rank_by_shapley(
            [
                royalties.HospitalContribution(
                    h.pseudonym, h.share, h.shapley, h.shapley_se, h.loss_delta_tokens, h.data_size
                )
                for h in everyone
            ]
        )
        pool = royalties.pool_account(model.model_version)
        contributions.append(
            VersionContribution(
                model_version=model.model_version,
                method=model.method,
                utility=model.utility,
                share=share.share,
                shapley=share.shapley,
                shapley_se=share.shapley_se,
                loss_delta_tokens=share.loss_delta_tokens,
                data_size=share.data_size,
                rank=ranks[pseudonym],
                hospitals=len(everyone),
                pool_funded=_funded(session, pool),
                pool_unpaid=ledger.balance(session, pool),
            )
        )
    account = royalties.hospital_account(pseudonym)
    versions = [c.model_version for c in contributions]
    lines = session.execute(
        select(RoyaltyPayout, func.coalesce(LedgerEntry.amount, 0))
        .outerjoin(
            LedgerEntry,
            and_(
                LedgerEntry.transaction_id == RoyaltyPayout.transaction_id,
                LedgerEntry.account == account,
            ),
        )
        .where(RoyaltyPayout.model_version.in_(versions))
        .order_by(RoyaltyPayout.period_end, RoyaltyPayout.model_version)
    ).all()
    payouts = [
        PayoutLine(p.period_end, p.model_version, p.pool, int(amount), p.created_at)
        for p, amount in lines
    ]
    return Statement(
        pseudonym=pseudonym,
        display_name=hospital.display_name,
        contributions=contributions,
        payouts=payouts,
        total_paid=sum(p.amount for p in payouts),
        balance=ledger.balance(session, account),
    )
