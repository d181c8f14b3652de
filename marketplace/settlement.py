"""Settlement and escalation of review panels (storage side of ``domain.consensus``).

Called inside the caller's unit of work with the case row already locked, so a
case is settled exactly once: diagnosis recorded, escrow paid out to the
agreeing doctors, reputations moved, one research row written, and one
``case.settled`` message for the clinic (the patient's diagnosis) in the outbox.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.domain import ledger as ledger_domain
from marketplace.domain.anonymize import anonymize
from marketplace.domain.consensus import Ballot, Outcome, evaluate
from marketplace.domain.policy import MarketPolicy
from marketplace.domain.pricing import escalated_bounty, uncertainty
from marketplace.domain.status import CaseStatus
from marketplace.messages import CaseSettled
from marketplace.outbox import tell_clinic
from marketplace.storage.models import Case, Doctor, ResearchRow, Vote

log = logging.getLogger(__name__)


def panel_votes(session: Session, case_id: str) -> list[tuple[Vote, Doctor]]:
    """A case's votes with their doctors, in vote order (server-side use only)."""
    rows = session.execute(
        select(Vote, Doctor)
        .join(Doctor, Doctor.id == Vote.doctor_id)
        .where(Vote.case_id == case_id)
        .order_by(Vote.cast_at, Vote.id)
    )
    return [(vote, doctor) for vote, doctor in rows]


def advance_panel(session: Session, case: Case, now: datetime, policy: MarketPolicy) -> str:
    """Apply the consensus rule to a locked case after a vote; returns the action taken."""
    votes = panel_votes(session, case.id)
    reliability = policy.reputation.reliability
    ballots = [
        Ballot(vote.label, reliability.estimate(doc.beta_agree, doc.beta_dissent))
        for vote, doc in votes
    ]
    outcome = evaluate(ballots, case.reviewers_needed, policy.panel)
    if outcome.action == "widen":
        # More votes needed, but no seat opens for it: seats follow the escalation clock only
        # (``domain.seats``), so no one learns from a reopened seat that the votes disagreed.
        # The extra votes come from seats already open or from those of the next escalation.
        case.reviewers_needed = outcome.panel_size
        log.info("case %s: panel widened to %d", case.id, outcome.panel_size)
    elif outcome.action == "settle":
        _settle(session, case, votes, outcome, now, policy)
    return outcome.action


def _settle(
    session: Session,
    case: Case,
    votes: list[tuple[Vote, Doctor]],
    outcome: Outcome,
    now: datetime,
    policy: MarketPolicy,
) -> None:
    assert outcome.label is not None and outcome.agreement is not None
    agreeing = [doc for vote, doc in votes if vote.label == outcome.label]
    escrow = ledger_domain.escrow_account(case.id)
    postings = ledger_domain.payout(
        escrow,
        ledger.balance(session, escrow),
        [ledger_domain.doctor_account(doc.id) for doc in agreeing],
    )
    if postings:
        ledger.post(session, kind="payout", postings=postings, now=now, case_id=case.id)

    # An unfamiliar case is as hard as a coin flip, whatever its (untrusted) confidence.
    difficulty = (
        1.0
        if case.unfamiliar
        else uncertainty(case.confidence if case.confidence is not None else 1.0)
    )
    rule = policy.reputation.rule
    for vote, doc in votes:
        agreed = vote.label == outcome.label
        doc.reputation = rule.apply(doc.reputation, agreed, difficulty)
        if agreed:
            doc.beta_agree += 1.0
        else:
            doc.beta_dissent += 1.0

    record = anonymize(
        settled_at=now,
        backbone=case.backbone or "unknown",
        model_label=case.model_label or "unknown",
        confidence=case.confidence if case.confidence is not None else 1.0,
        diagnosis=outcome.label,
        reviewers=len(votes),
        agreement=outcome.agreement,
        unfamiliar=bool(case.unfamiliar),
        model_version=case.passport_version,
    )
    row = ResearchRow(
        day=record.day,
        backbone=record.backbone,
        model_label=record.model_label,
        confidence_bucket=record.confidence_bucket,
        diagnosis=record.diagnosis,
        reviewers=record.reviewers,
        agreement=record.agreement,
        unfamiliar=record.unfamiliar,
        passport_version=record.model_version,
        model_version=case.model_sha256,
    )
    session.add(row)
    session.flush()
    case.status = CaseStatus.SETTLED
    case.settled_at = now
    case.diagnosis = outcome.label
    agreement = round(outcome.agreement, 4)
    case.agreement = agreement
    case.reviewers = len(votes)
    case.research_row_id = row.id
    tell_clinic(session, CaseSettled(case.id, outcome.label, now, len(votes), agreement), now)
    log.info("case %s settled by %d reviewers", case.id, len(votes))


def escalate_case(session: Session, case: Case, now: datetime, policy: MarketPolicy) -> None:
    """Raise the bounty (treasury -> escrow), admit one lower tier, open the next seats.

    The same whatever the votes: no seat is freed and the status stays, and the seats follow
    the new escalation level (``policy.seats``), so a case looks the same after an escalation
    however many of its seat-holders voted.
    """
    assert case.bounty is not None
    new_bounty = escalated_bounty(
        case.bounty, policy.escalation_raise_percent, policy.escalation_cap
    )
    if new_bounty > case.bounty:
        ledger.post(
            session,
            kind="escalation",
            case_id=case.id,
            postings=ledger_domain.transfer(
                ledger_domain.TREASURY,
                ledger_domain.escrow_account(case.id),
                new_bounty - case.bounty,
            ),
            now=now,
        )
        case.bounty = new_bounty
    case.min_tier = max(0, case.min_tier - 1)
    case.escalation_level += 1
    case.review_deadline = now + policy.review_window
    log.info(
        "case %s escalated to level %d (%d seats)",
        case.id,
        case.escalation_level,
        policy.seats(case.escalation_level),
    )
