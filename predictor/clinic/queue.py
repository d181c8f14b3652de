"""The clinic's inference queue, kept in its own store: queued cases leased to party pairs.

Several workers (party-0 processes, each computing with its own party 1) take cases from the
same table. A worker claims up to one batch of claimable cases - ``queued``, and not leased or
leased until a time already past - with ``SELECT … FOR UPDATE SKIP LOCKED`` (PostgreSQL:
concurrent workers neither wait on nor take each other's rows; SQLite serialises writers, which
is why more than one pair needs PostgreSQL), and leases them for ``lease_s`` seconds, renewing
the lease while it computes. A worker that dies stops renewing: when its lease expires the
cases are claimable again and another pair computes them. Recording is idempotent
(:func:`predictor.clinic.cases.record_prediction`): a case computed twice counts once.

A case is created held by its upload (:data:`UPLOAD_OWNER`) and released once its image has its
case's name, so no worker ever takes a case whose image is still being written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from marketplace.domain.status import CaseStatus
from marketplace.storage.unit import read_only, unit_of_work
from predictor.clinic.models import PatientCase

#: Lease owner of a case whose image is still being stored (see :func:`release_upload`).
UPLOAD_OWNER = "upload"
#: How long an interrupted upload keeps its case from workers (the front door's start
#: releases or discards it sooner).
UPLOAD_HOLD = timedelta(minutes=10)
_WORKER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_QUEUED = CaseStatus.QUEUED.value


@dataclass(frozen=True)
class ClaimedCase:
    case_id: str
    #: How many times a worker has taken this case, this time included.
    attempts: int
    submitted_at: datetime


def check_worker(worker: str) -> str:
    """A worker id: what leases and ``predicted_by`` name (a pair and a process in it)."""
    if not _WORKER.fullmatch(worker) or worker == UPLOAD_OWNER:
        raise ValueError(f"worker id must match {_WORKER.pattern} and not be {UPLOAD_OWNER!r}")
    return worker


def _claimable(now: datetime) -> ColumnElement[bool]:
    return and_(
        PatientCase.status == _QUEUED,
        or_(PatientCase.lease_expires_at.is_(None), PatientCase.lease_expires_at < now),
    )


@read_only
def any_claimable(session: Session, *, now: datetime) -> bool:
    """Whether :func:`claim` would find a case: a read, so idle workers poll without locking."""
    return session.scalar(select(PatientCase.id).where(_claimable(now)).limit(1)) is not None


@unit_of_work
def claim(
    session: Session, worker: str, *, limit: int, now: datetime, lease_s: float
) -> list[ClaimedCase]:
    """Lease up to ``limit`` claimable cases to ``worker``, oldest first."""
    claimable = (
        select(PatientCase.id, PatientCase.submitted_at)
        .where(_claimable(now))
        .order_by(PatientCase.submitted_at, PatientCase.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    found = {case_id: submitted_at for case_id, submitted_at in session.execute(claimable)}
    ids = list(found)
    if not ids:
        return []
    rows = session.execute(
        update(PatientCase)
        .where(PatientCase.id.in_(ids))
        .values(
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=PatientCase.attempts + 1,
        )
        .returning(PatientCase.id, PatientCase.attempts)
        .execution_options(synchronize_session=False)
    )
    attempts = {case_id: count for case_id, count in rows}
    return [ClaimedCase(case_id, attempts[case_id], found[case_id]) for case_id in ids]


@unit_of_work
def renew(
    session: Session, worker: str, case_ids: list[str], *, now: datetime, lease_s: float
) -> int:
    """Extend ``worker``'s leases on those of ``case_ids`` still queued; how many it still holds."""
    if not case_ids:
        return 0
    result = session.execute(
        update(PatientCase)
        .where(
            PatientCase.id.in_(case_ids),
            PatientCase.status == _QUEUED,
            PatientCase.lease_owner == worker,
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@unit_of_work
def release_worker(session: Session, worker: str) -> int:
    """Make ``worker``'s leftover leases claimable now (a restarted worker, same id)."""
    result = session.execute(
        update(PatientCase)
        .where(PatientCase.status == _QUEUED, PatientCase.lease_owner == worker)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@unit_of_work
def release_upload(session: Session, case_id: str) -> None:
    """The case's image is stored: workers may take it now."""
    session.execute(
        update(PatientCase)
        .where(PatientCase.id == case_id, PatientCase.lease_owner == UPLOAD_OWNER)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


@unit_of_work
def release_uploads(session: Session, case_ids: list[str]) -> None:
    """Release the upload holds of ``case_ids`` (the front door's start: images present)."""
    if case_ids:
        session.execute(
            update(PatientCase)
            .where(PatientCase.id.in_(case_ids), PatientCase.lease_owner == UPLOAD_OWNER)
            .values(lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )


@read_only
def waiting(session: Session) -> int:
    """Cases waiting for a prediction (queued, leased or not), across every pair."""
    return int(session.scalar(select(func.count()).where(PatientCase.status == _QUEUED)) or 0)
