"""A doctor's history at a glance: reputation and earnings after each settled case, agreement
with the final diagnoses, and how many of their cases taught the model serving now. Rebuilt from what the store keeps (votes, cases, the ledger) by
``domain.track``; only settled cases count, so nothing here depends on a sealed vote."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from marketplace.domain import ledger as ledger_domain
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.domain.pricing import uncertainty
from marketplace.domain.status import CaseStatus
from marketplace.domain.track import SettledVote, TrackPoint, track
from marketplace.errors import DoctorNotFound
from marketplace.storage.models import Case, Doctor, LedgerEntry, LedgerTransaction, Vote
from marketplace.storage.unit import read_only
from marketplace.teaching import cases_that_taught

#: Points in the chart: the most recent settled cases.
MAX_POINTS = 200


@dataclass(frozen=True)
class TrackRecord:
    """Reputation and credits earned before the first point, one point per settled case
    (oldest first), and the doctor's agreement with the final diagnosis over all their
    settled cases."""

    start_reputation: int
    earned_before: int
    points: tuple[TrackPoint, ...]
    settled: int
    agreed: int
    #: of those settled cases, how many taught the model serving now (``marketplace.teaching``)
    taught_serving_model: int = 0


@read_only
def track_record(
    session: Session, doctor_id: str, policy: MarketPolicy = DEFAULT_POLICY
) -> TrackRecord:
    doctor = session.get(Doctor, doctor_id)
    if doctor is None:
        raise DoctorNotFound(doctor_id)
    mine = and_(Vote.case_id == Case.id, Vote.doctor_id == doctor_id)
    settled = Case.status == CaseStatus.SETTLED
    rows = session.execute(
        select(Case.id, Case.settled_at, Case.confidence, Case.diagnosis, Vote.label)
        .join(Vote, mine)
        .where(settled)
        .order_by(Case.settled_at.desc(), Case.id.desc())
        .limit(MAX_POINTS)
    ).all()
    total = int(
        session.scalar(select(func.count()).select_from(Case).join(Vote, mine).where(settled)) or 0
    )
    agreed = int(
        session.scalar(
            select(func.count())
            .select_from(Case)
            .join(Vote, mine)
            .where(settled, Vote.label == Case.diagnosis)
        )
        or 0
    )
    account = ledger_domain.doctor_account(doctor_id)
    paid: dict[str, int] = {}
    for case_id, amount in session.execute(
        select(LedgerTransaction.case_id, func.sum(LedgerEntry.amount))
        .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
        .where(LedgerEntry.account == account, LedgerTransaction.kind == "payout")
        .group_by(LedgerTransaction.case_id)
    ):
        if case_id is not None:
            paid[case_id] = int(amount)
    shown = {row.id for row in rows}
    earned_before = sum(amount for case_id, amount in paid.items() if case_id not in shown)
    votes = [
        SettledVote(
            case_id=row.id,
            settled_at=row.settled_at,
            agreed=row.label == row.diagnosis,
            difficulty=uncertainty(row.confidence if row.confidence is not None else 1.0),
            paid=paid.get(row.id, 0),
        )
        for row in reversed(rows)
    ]
    start, points = track(votes, doctor.reputation, earned_before, policy.reputation.rule)
    taught = cases_that_taught(session, doctor_id)
    return TrackRecord(start, earned_before, tuple(points), total, agreed, taught)
