"""The doctors' side of a case: pool, claims, sealed votes, disclosure, history, escalation.

Every function is one transaction (it commits or rolls back itself), messages to the clinic
included (``marketplace.outbox``). Rows of a
case are locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers with ``BEGIN IMMEDIATE``) before panel state changes, so concurrent
claims and votes cannot overfill a panel or skip a settlement.

Before a case settles, nothing any doctor or the clinic sees depends on its votes: seats
follow the escalation level (``domain.seats``) and are never freed, claims only grow, and a
vote answers with its receipt alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, func, select
from sqlalchemy import case as sql_case
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from marketplace import rate_limits
from marketplace.domain import ledger as ledger_domain
from marketplace.domain.consensus import commitment, validate_label
from marketplace.domain.limits import may_open_claim
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.domain.status import MARKET_STATUSES, REVIEWABLE, CaseStatus
from marketplace.errors import (
    AlreadyClaimed,
    AlreadyVoted,
    CaseNotClaimable,
    CaseNotFound,
    CaseNotOpen,
    DoctorNotFound,
    InvalidInput,
    NotOnPanel,
    NotSettled,
    TierTooLow,
    TooManyOpenClaims,
)
from marketplace.messages import SeatGranted
from marketplace.outbox import tell_clinic
from marketplace.settlement import advance_panel, escalate_case
from marketplace.storage.models import (
    Case,
    Claim,
    Doctor,
    LedgerEntry,
    LedgerTransaction,
    Outbox,
    Vote,
)
from marketplace.storage.unit import read_only, unit_of_work

MAX_NOTE = 2000


@dataclass(frozen=True)
class CaseCard:
    """Public facts about a case for doctors: no votes, tallies, panel size or patient data."""

    case_id: str
    bounty: int | None
    submitted_at: datetime
    review_deadline: datetime | None
    escalation_level: int
    #: the model found the image unlike its training data: its confidence is not trusted
    unfamiliar: bool
    #: which model version predicted it (its passport's name, e.g. "lenet v2") and its
    #: passport id; model_attested False: served without a passport. None: not known.
    model_version: str | None
    passport_id: str | None
    model_attested: bool | None


@dataclass(frozen=True)
class ClaimedCase(CaseCard):
    """A case on the doctor's panel, with their own receipt once they voted, and only then
    the model's label (so the model does not anchor the doctor's reading)."""

    voted: bool
    receipt: str | None
    model_label: str | None


@dataclass(frozen=True)
class Receipt:
    """What a voter gets back: the same whatever the vote did to the panel."""

    case_id: str
    receipt: str
    cast_at: datetime


@dataclass(frozen=True)
class DisclosedVote:
    receipt: str
    label: str
    salt: str


@dataclass(frozen=True)
class Disclosure:
    """A settled case's votes with their salts, ordered by receipt."""

    case_id: str
    diagnosis: str | None
    settled_at: datetime
    votes: tuple[DisclosedVote, ...]


@dataclass(frozen=True)
class SettledReview:
    """One settled case the doctor voted on, and what it earned them."""

    case_id: str
    settled_at: datetime | None
    unfamiliar: bool
    model_version: str | None
    passport_id: str | None
    model_attested: bool | None
    your_label: str
    your_receipt: str
    diagnosis: str | None
    agreed: bool
    reviewers: int | None
    paid: int
    model_label: str | None


@dataclass(frozen=True)
class MarketCounts:
    """Totals for operators: cases per market status (each listed), votes cast, and messages
    for the clinic not yet delivered (grows while the clinic is unreachable)."""

    cases: Mapping[CaseStatus, int]
    votes: int
    undelivered: int


def _doctor(session: Session, doctor_id: str) -> Doctor:
    doctor = session.get(Doctor, doctor_id)
    if doctor is None:
        raise DoctorNotFound(doctor_id)
    return doctor


def _locked_case(session: Session, case_id: str) -> Case:
    case = session.get(Case, case_id, with_for_update=True)
    if case is None:
        raise CaseNotFound(case_id)
    return case


def _claim(session: Session, case_id: str, doctor_id: str) -> Claim | None:
    return session.scalar(
        select(Claim).where(Claim.case_id == case_id, Claim.doctor_id == doctor_id)
    )


def _card(case: Case) -> CaseCard:
    return CaseCard(
        case.id,
        case.bounty,
        case.submitted_at,
        case.review_deadline,
        case.escalation_level,
        bool(case.unfamiliar),
        case.passport_version,
        case.passport_id,
        case.model_attested,
    )


def _seats(policy: MarketPolicy) -> ColumnElement[int]:
    """``policy.seats(Case.escalation_level)`` as SQL, for the pool's query."""
    grown = policy.panel.panel_size + Case.escalation_level * policy.escalation_seats
    cap = policy.panel.max_panel
    return sql_case((grown >= cap, cap), else_=grown)


def _open_claims(session: Session, doctor_id: str) -> int:
    """The doctor's claims without their vote, on cases not yet settled."""
    voted = exists().where(Vote.case_id == Claim.case_id, Vote.doctor_id == Claim.doctor_id)
    count = session.scalar(
        select(func.count())
        .select_from(Claim)
        .join(Case, Case.id == Claim.case_id)
        .where(Claim.doctor_id == doctor_id, Case.status.in_(REVIEWABLE), ~voted)
    )
    return int(count or 0)


@read_only
def list_pool(
    session: Session, doctor_id: str, policy: MarketPolicy = DEFAULT_POLICY
) -> list[CaseCard]:
    """Cases this doctor may claim now, highest bounty first (tier-filtered, not yet claimed)."""
    doctor = _doctor(session, doctor_id)
    tier = policy.reputation.tiers.doctor_tier(doctor.reputation)
    mine = select(Claim.case_id).where(Claim.doctor_id == doctor_id)
    rows = session.scalars(
        select(Case)
        .where(
            Case.status.in_(REVIEWABLE),
            Case.claims_count < _seats(policy),
            Case.min_tier <= tier,
            Case.id.not_in(mine),
        )
        .order_by(Case.bounty.desc(), Case.submitted_at, Case.id)
        .limit(200)
    )
    return [_card(case) for case in rows]


@unit_of_work
def claim_case(
    session: Session,
    doctor_id: str,
    case_id: str,
    *,
    now: datetime,
    policy: MarketPolicy = DEFAULT_POLICY,
) -> CaseCard:
    """Take a seat on a case's panel: while seats are left, the tier admits it, the doctor
    holds fewer than ``policy.max_open_claims`` unvoted claims and is within the claim rate.

    The seat is never taken back. The clinic is told (``seat.granted``, posted in this
    transaction), so it lets the doctor see the image.
    """
    doctor = _doctor(session, doctor_id)
    case = _locked_case(session, case_id)
    if _claim(session, case_id, doctor_id) is not None:
        raise AlreadyClaimed(case_id)
    if case.status not in REVIEWABLE:
        raise CaseNotClaimable(f"case is {case.status}")
    if not policy.reputation.tiers.admits(doctor.reputation, case.min_tier):
        raise TierTooLow("your reputation tier does not admit this case yet")
    if case.claims_count >= policy.seats(case.escalation_level):
        raise CaseNotClaimable("the panel is full")
    # One doctor's claims one at a time (any process), so the cap and the rate are exact.
    key = rate_limits.claims_of(doctor_id)
    rate_limits.lock(session, key)
    held = _open_claims(session, doctor_id)
    if not may_open_claim(held, policy.max_open_claims):
        raise TooManyOpenClaims(
            f"you hold {held} claims without your vote (at most {policy.max_open_claims}); "
            "vote on them first"
        )
    rate_limits.take(session, key, policy.claim_rate, now, "claims")
    session.add(Claim(case_id=case_id, doctor_id=doctor_id, claimed_at=now))
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyClaimed(case_id) from exc
    case.claims_count += 1
    case.status = CaseStatus.UNDER_REVIEW
    tell_clinic(session, SeatGranted(case_id, doctor_id, now), now)
    return _card(case)


@read_only
def my_claims(session: Session, doctor_id: str) -> list[ClaimedCase]:
    """The doctor's unsettled claimed cases, with their own receipt once they voted."""
    rows = session.execute(
        select(Case, Vote)
        .join(Claim, and_(Claim.case_id == Case.id, Claim.doctor_id == doctor_id))
        .outerjoin(Vote, and_(Vote.case_id == Case.id, Vote.doctor_id == doctor_id))
        .where(Case.status.in_(REVIEWABLE))
        .order_by(Claim.claimed_at, Case.id)
    )
    return [
        ClaimedCase(
            **vars(_card(case)),
            voted=vote is not None,
            receipt=vote.commitment if vote is not None else None,
            model_label=case.model_label if vote is not None else None,
        )
        for case, vote in rows
    ]


@read_only
def require_claim(session: Session, doctor_id: str, case_id: str) -> None:
    """Raise unless the doctor sits on this unsettled case's panel (gate for image links)."""
    case = session.get(Case, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    if _claim(session, case_id, doctor_id) is None:
        raise NotOnPanel(case_id)
    if case.status not in REVIEWABLE:
        raise CaseNotOpen(f"case is {case.status}")


@unit_of_work
def cast_vote(
    session: Session,
    doctor_id: str,
    case_id: str,
    *,
    label: str,
    note: str | None,
    now: datetime,
    policy: MarketPolicy = DEFAULT_POLICY,
) -> Receipt:
    """Record a sealed vote and return its receipt; may widen or settle the panel.

    The response is the same whatever the vote did to the panel, so a voter
    learns nothing about the other votes from it.
    """
    try:
        validate_label(label)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise InvalidInput(f"note must be text of at most {MAX_NOTE} characters")
    case = _locked_case(session, case_id)
    if _claim(session, case_id, doctor_id) is None:
        raise NotOnPanel("claim the case before deciding it")
    existing = session.scalar(
        select(Vote.id).where(Vote.case_id == case_id, Vote.doctor_id == doctor_id)
    )
    if existing is not None:
        raise AlreadyVoted("one vote per doctor per case; votes cannot be changed")
    if case.status != CaseStatus.UNDER_REVIEW:
        raise CaseNotOpen(f"case is {case.status}")
    salt = secrets.token_hex(32)
    receipt = commitment(case_id, label, salt)
    session.add(
        Vote(
            case_id=case_id,
            doctor_id=doctor_id,
            label=label,
            note=note or None,
            salt=salt,
            commitment=receipt,
            cast_at=now,
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyVoted("one vote per doctor per case") from exc
    advance_panel(session, case, now, policy)
    return Receipt(case_id, receipt, now)


@read_only
def disclosure(session: Session, doctor_id: str, case_id: str) -> Disclosure:
    """After settlement, every vote with its salt so participants can check all receipts."""
    case = session.get(Case, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    if _claim(session, case_id, doctor_id) is None:
        raise NotOnPanel(case_id)
    if case.status != CaseStatus.SETTLED or case.settled_at is None:
        raise NotSettled("votes are sealed until the case settles")
    votes = session.scalars(select(Vote).where(Vote.case_id == case_id)).all()
    disclosed = sorted(
        (DisclosedVote(v.commitment, v.label, v.salt) for v in votes), key=lambda v: v.receipt
    )
    return Disclosure(case.id, case.diagnosis, case.settled_at, tuple(disclosed))


@read_only
def history(session: Session, doctor_id: str) -> list[SettledReview]:
    """Settled cases the doctor voted on: their vote, the diagnosis and what they earned."""
    account = ledger_domain.doctor_account(doctor_id)
    rows = session.execute(
        select(Case, Vote)
        .join(Vote, and_(Vote.case_id == Case.id, Vote.doctor_id == doctor_id))
        .where(Case.status == CaseStatus.SETTLED)
        .order_by(Case.settled_at.desc(), Case.id)
        .limit(200)
    ).all()
    paid: dict[str, int] = {}
    if rows:
        entries = session.execute(
            select(LedgerTransaction.case_id, LedgerEntry.amount)
            .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
            .where(
                LedgerEntry.account == account,
                LedgerTransaction.case_id.in_([case.id for case, _ in rows]),
            )
        )
        for case_id, amount in entries:
            if case_id is not None:
                paid[case_id] = paid.get(case_id, 0) + int(amount)
    return [
        SettledReview(
            case_id=case.id,
            settled_at=case.settled_at,
            unfamiliar=bool(case.unfamiliar),
            model_version=case.passport_version,
            passport_id=case.passport_id,
            model_attested=case.model_attested,
            your_label=vote.label,
            your_receipt=vote.commitment,
            diagnosis=case.diagnosis,
            agreed=vote.label == case.diagnosis,
            reviewers=case.reviewers,
            paid=paid.get(case.id, 0),
            model_label=case.model_label,
        )
        for case, vote in rows
    ]


@unit_of_work
def escalate_overdue(
    session: Session, *, now: datetime, policy: MarketPolicy = DEFAULT_POLICY
) -> list[str]:
    """Escalate every open/under-review case past its deadline; returns their ids.

    This is also the unvoted-claim timeout: a case whose seat-holders have not all voted
    within its window gets new seats, whoever voted; no seat is ever freed."""
    overdue = session.scalars(
        select(Case)
        .where(Case.status.in_(REVIEWABLE), Case.review_deadline < now)
        .order_by(Case.review_deadline)
        .with_for_update()
    ).all()
    for case in overdue:
        escalate_case(session, case, now, policy)
    return [case.id for case in overdue]


@read_only
def market_counts(session: Session) -> MarketCounts:
    """Cases per status, votes cast and undelivered messages, read from the database."""
    by_status = dict.fromkeys(MARKET_STATUSES, 0)
    for status, count in session.execute(select(Case.status, func.count()).group_by(Case.status)):
        by_status[CaseStatus(status)] = int(count)
    votes = session.scalar(select(func.count()).select_from(Vote))
    undelivered = session.scalar(
        select(func.count()).select_from(Outbox).where(Outbox.delivered_at.is_(None))
    )
    return MarketCounts(by_status, int(votes or 0), int(undelivered or 0))
