"""The doctors' side of a case: pool, claims, sealed votes, disclosure, history, escalation.

Every function is one transaction (it commits or rolls back itself). Rows of a
case are locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers with ``BEGIN IMMEDIATE``) before panel state changes, so concurrent
claims and votes cannot overfill a panel or skip a settlement.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.domain import ledger as ledger_domain
from marketplace.domain.consensus import commitment, validate_label
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
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
)
from marketplace.settlement import REVIEWABLE, advance_panel, escalate_case
from marketplace.storage.models import Case, Claim, Doctor, LedgerEntry, LedgerTransaction, Vote
from marketplace.storage.unit import read_only, unit_of_work

MAX_NOTE = 2000


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


def _card(case: Case) -> dict[str, Any]:
    """Public facts about a case for doctors: no votes, tallies, panel size or patient data."""
    return {
        "case_id": case.id,
        "bounty": case.bounty,
        "submitted_at": case.submitted_at.isoformat(),
        "review_deadline": case.review_deadline.isoformat() if case.review_deadline else None,
        "escalation_level": case.escalation_level,
    }


@read_only
def list_pool(
    session: Session, doctor_id: str, policy: MarketPolicy = DEFAULT_POLICY
) -> list[dict[str, Any]]:
    """Cases this doctor may claim now, highest bounty first (tier-filtered, not yet claimed)."""
    doctor = _doctor(session, doctor_id)
    tier = policy.reputation.tiers.doctor_tier(doctor.reputation)
    mine = select(Claim.case_id).where(Claim.doctor_id == doctor_id)
    rows = session.scalars(
        select(Case)
        .where(
            Case.status.in_(REVIEWABLE),
            Case.claims_count < Case.reviewers_needed,
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
) -> dict[str, Any]:
    """Take a seat on a case's panel (only while seats are left and the tier admits it)."""
    doctor = _doctor(session, doctor_id)
    case = _locked_case(session, case_id)
    if _claim(session, case_id, doctor_id) is not None:
        raise AlreadyClaimed(case_id)
    if case.status not in REVIEWABLE:
        raise CaseNotClaimable(f"case is {case.status}")
    if not policy.reputation.tiers.admits(doctor.reputation, case.min_tier):
        raise TierTooLow("your reputation tier does not admit this case yet")
    if case.claims_count >= case.reviewers_needed:
        raise CaseNotClaimable("the panel is full")
    session.add(Claim(case_id=case_id, doctor_id=doctor_id, claimed_at=now))
    try:
        session.flush()
    except IntegrityError as exc:
        raise AlreadyClaimed(case_id) from exc
    case.claims_count += 1
    case.status = "under_review"
    return _card(case)


@read_only
def my_claims(session: Session, doctor_id: str) -> list[dict[str, Any]]:
    """The doctor's unsettled claimed cases, with their own receipt once they voted."""
    rows = session.execute(
        select(Case, Vote)
        .join(Claim, and_(Claim.case_id == Case.id, Claim.doctor_id == doctor_id))
        .outerjoin(Vote, and_(Vote.case_id == Case.id, Vote.doctor_id == doctor_id))
        .where(Case.status.in_(REVIEWABLE))
        .order_by(Claim.claimed_at, Case.id)
    )
    result = []
    for case, vote in rows:
        card = _card(case)
        card["voted"] = vote is not None
        card["receipt"] = vote.commitment if vote is not None else None
        result.append(card)
    return result


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
) -> dict[str, Any]:
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
    if case.status != "under_review":
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
    return {"case_id": case_id, "receipt": receipt, "cast_at": now.isoformat()}


@read_only
def disclosure(session: Session, doctor_id: str, case_id: str) -> dict[str, Any]:
    """After settlement, every vote with its salt so participants can check all receipts."""
    case = session.get(Case, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    if _claim(session, case_id, doctor_id) is None:
        raise NotOnPanel(case_id)
    if case.status != "settled" or case.settled_at is None:
        raise NotSettled("votes are sealed until the case settles")
    votes = session.scalars(select(Vote).where(Vote.case_id == case_id)).all()
    return {
        "case_id": case.id,
        "diagnosis": case.diagnosis,
        "settled_at": case.settled_at.isoformat(),
        "votes": sorted(
            ({"receipt": v.commitment, "label": v.label, "salt": v.salt} for v in votes),
            key=lambda v: v["receipt"],
        ),
    }


@read_only
def history(session: Session, doctor_id: str) -> list[dict[str, Any]]:
    """Settled cases the doctor voted on: their vote, the diagnosis and what they earned."""
    account = ledger_domain.doctor_account(doctor_id)
    rows = session.execute(
        select(Case, Vote)
        .join(Vote, and_(Vote.case_id == Case.id, Vote.doctor_id == doctor_id))
        .where(Case.status == "settled")
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
            paid[case_id] = paid.get(case_id, 0) + int(amount)
    return [
        {
            "case_id": case.id,
            "settled_at": case.settled_at.isoformat() if case.settled_at else None,
            "your_label": vote.label,
            "your_receipt": vote.commitment,
            "diagnosis": case.diagnosis,
            "agreed": vote.label == case.diagnosis,
            "reviewers": case.reviewers,
            "paid": paid.get(case.id, 0),
        }
        for case, vote in rows
    ]


@unit_of_work
def escalate_overdue(
    session: Session, *, now: datetime, policy: MarketPolicy = DEFAULT_POLICY
) -> list[str]:
    """Escalate every open/under-review case past its deadline; returns their ids."""
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
def escrow_balance(session: Session, case_id: str) -> int:
    return ledger.balance(session, ledger_domain.escrow_account(case_id))
