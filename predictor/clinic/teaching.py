"""Which settled cases may teach the model, the rounds that took them, and how long their
images stay (issue 19). Party 0's store only: party 1 learns labels, never which case.

A case may teach when it is settled with one of the panel's labels, its patient consented at
upload, the model did not find its image unfamiliar, no round has taken it yet and its image
is still kept. A consenting case's image is kept for this purpose until a round has taken it,
and at most ``retention`` after settlement; then :func:`images_to_delete` names it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from infra import mailbox
from marketplace.domain.consensus import LABELS
from marketplace.domain.status import CaseStatus
from marketplace.messages import MARKETPLACE, CasesTaught
from predictor.clinic.models import ClinicOutbox, PatientCase, TeachingRound

#: The training folders' names for the panel's labels (``python -m training``'s layout).
FOLDERS = {"tumor": "yes", "no_tumor": "no"}
assert set(FOLDERS) == set(LABELS)

#: The outcomes of a finished round (``running`` until then).
OUTCOMES = ("promoted", "refused", "failed")


@dataclass(frozen=True)
class TeachingCase:
    case_id: str
    diagnosis: str

    @property
    def folder(self) -> str:
        return FOLDERS[self.diagnosis]


def eligible_cases(session: Session, *, now: datetime, retention: timedelta) -> list[TeachingCase]:
    """The cases a new round may take, oldest settlement first."""
    rows = session.execute(
        select(PatientCase.id, PatientCase.diagnosis)
        .where(
            PatientCase.status == CaseStatus.SETTLED.value,
            PatientCase.teaching_consent.is_(True),
            PatientCase.unfamiliar.is_(False),
            PatientCase.diagnosis.in_(LABELS),
            PatientCase.teaching_round_id.is_(None),
            PatientCase.image_deleted_at.is_(None),
            PatientCase.settled_at > now - retention,
        )
        .order_by(PatientCase.settled_at, PatientCase.id)
    )
    return [TeachingCase(case_id, str(diagnosis)) for case_id, diagnosis in rows]


def open_round(session: Session, cases: Sequence[TeachingCase], *, now: datetime) -> str:
    """Start a round that takes ``cases`` (no other round can take them again)."""
    if not cases:
        raise ValueError("a round takes at least one case")
    round_id = uuid.uuid4().hex
    with session.begin_nested():  # all or nothing: a refused round leaves no row behind
        session.add(TeachingRound(id=round_id, started_at=now, cases=len(cases), outcome="running"))
        session.flush()
        taken = session.execute(
            update(PatientCase)
            .where(
                PatientCase.id.in_([case.case_id for case in cases]),
                PatientCase.teaching_round_id.is_(None),
            )
            .values(teaching_round_id=round_id)
        )
        if taken.rowcount != len(cases):  # type: ignore[attr-defined]
            raise RuntimeError("another round took some of these cases at the same time")
    return round_id


def running_round(session: Session) -> tuple[str, list[TeachingCase]] | None:
    """The round that has not finished (a crashed job's), with its cases; None if none."""
    found = session.scalars(
        select(TeachingRound.id)
        .where(TeachingRound.outcome == "running")
        .order_by(TeachingRound.started_at)
    ).first()
    if found is None:
        return None
    rows = session.execute(
        select(PatientCase.id, PatientCase.diagnosis)
        .where(PatientCase.teaching_round_id == found)
        .order_by(PatientCase.settled_at, PatientCase.id)
    )
    return found, [TeachingCase(case_id, str(diagnosis)) for case_id, diagnosis in rows]


def finish_round(
    session: Session,
    round_id: str,
    *,
    outcome: str,
    now: datetime,
    candidate_sha256: str | None = None,
    parent_sha256: str | None = None,
    epsilon: float | None = None,
    reasons: Sequence[str] = (),
) -> None:
    """Record the round's outcome. A promoted one tells the marketplace which cases taught
    the candidate (``cases.taught``, in the same transaction), for the doctors' counts."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; choose from {OUTCOMES}")
    if outcome == "promoted" and not (candidate_sha256 and parent_sha256):
        raise ValueError("a promoted round names its candidate and its parent")
    record = session.get(TeachingRound, round_id, with_for_update=True)
    if record is None or record.outcome != "running":
        raise RuntimeError(f"round {round_id} is not running")
    record.outcome = outcome
    record.finished_at = now
    record.candidate_sha256 = candidate_sha256
    record.epsilon = epsilon
    record.reasons = "\n".join(reasons) or None
    if outcome == "promoted" and candidate_sha256 and parent_sha256:
        taught = list(
            session.scalars(
                select(PatientCase.id)
                .where(PatientCase.teaching_round_id == round_id)
                .order_by(PatientCase.id)
            )
        )
        for start in range(0, len(taught), CasesTaught.MAX_CASES):
            message = CasesTaught(candidate_sha256, parent_sha256,
                                  tuple(taught[start : start + CasesTaught.MAX_CASES]), now)  # fmt: skip
            mailbox.post(session, ClinicOutbox, destination=MARKETPLACE, type=CasesTaught.TYPE,
                         body=message.body(), now=now)  # fmt: skip


def images_to_delete(session: Session, *, now: datetime, retention: timedelta) -> list[str]:
    """Consenting cases whose image has served its purpose: a finished round took it, or it
    was settled longer than ``retention`` ago and no round took it (it never will)."""
    finished = select(TeachingRound.id).where(TeachingRound.outcome != "running")
    return list(
        session.scalars(
            select(PatientCase.id)
            .where(
                PatientCase.teaching_consent.is_(True),
                PatientCase.image_deleted_at.is_(None),
                or_(
                    PatientCase.teaching_round_id.in_(finished),
                    and_(
                        PatientCase.teaching_round_id.is_(None),
                        PatientCase.status == CaseStatus.SETTLED.value,
                        PatientCase.settled_at <= now - retention,
                    ),
                ),
            )
            .order_by(PatientCase.id)
        )
    )


def mark_images_deleted(session: Session, case_ids: Sequence[str], *, now: datetime) -> None:
    if case_ids:
        session.execute(
            update(PatientCase)
            .where(PatientCase.id.in_(list(case_ids)), PatientCase.image_deleted_at.is_(None))
            .values(image_deleted_at=now)
        )
