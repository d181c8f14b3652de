"""Enrolment and image-access records in the clinic's store.

``decide`` is the whole rule: enrolled and not revoked, a fresh signature by the enrolled
key never used before, a seat the marketplace granted on an unsettled case, and the clinic's
caps. Every decision, served or refused, is recorded for the patient's audit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from marketplace.domain.status import CaseStatus
from marketplace.errors import CaseNotFound, InvalidInput, WrongPatientToken
from marketplace.storage.unit import read_only, unit_of_work
from predictor.access.policy import SERVED, AccessCaps, Refusal, over_caps
from predictor.access.protocol import BadKey, load_public_key, verify_request
from predictor.clinic.models import EnrolledDoctor, ImageAccess, PatientCase, Seat

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ImageRequest:
    case_id: str
    doctor_id: str
    timestamp: str
    signature: str


@dataclass(frozen=True)
class AccessRecord:
    """One line of a patient's audit: a doctor's pseudonym, when, and what happened."""

    doctor_id: str
    at: datetime
    result: str


def _clean(value: str, field: str, max_len: int = 120) -> str:
    value = (value or "").strip()
    if not value or len(value) > max_len or any(ord(ch) < 32 for ch in value):
        raise InvalidInput(f"{field} must be 1-{max_len} printable characters")
    return value


@unit_of_work
def enrol(
    session: Session, *, doctor_id: str, name: str, licence: str, public_key: str, now: datetime
) -> None:
    """Enrol (or re-enrol with a new key) a vetted doctor; clears any revocation."""
    if not _ID.fullmatch(doctor_id or ""):
        raise InvalidInput("doctor_id must be the doctor's marketplace id")
    try:
        load_public_key(public_key)
    except BadKey as exc:
        raise InvalidInput(str(exc)) from exc
    doctor = session.get(EnrolledDoctor, doctor_id)
    if doctor is None:
        doctor = EnrolledDoctor(doctor_id=doctor_id)
        session.add(doctor)
    doctor.name = _clean(name, "name")
    doctor.licence = _clean(licence, "licence")
    doctor.public_key = public_key.strip()
    doctor.enrolled_at = now
    doctor.revoked_at = None


@unit_of_work
def revoke(session: Session, *, doctor_id: str, now: datetime) -> bool:
    """Revoke a doctor's key (lost or compromised); False when not enrolled."""
    doctor = session.get(EnrolledDoctor, doctor_id)
    if doctor is None:
        return False
    doctor.revoked_at = now
    return True


@read_only
def enrolled(session: Session) -> list[EnrolledDoctor]:
    return list(session.scalars(select(EnrolledDoctor).order_by(EnrolledDoctor.enrolled_at)))


def _refusal(
    session: Session, request: ImageRequest, now: datetime, caps: AccessCaps
) -> tuple[Refusal | None, str | None]:
    doctor = session.get(EnrolledDoctor, request.doctor_id)
    if doctor is None:
        return Refusal.NOT_ENROLLED, None
    if doctor.revoked_at is not None:
        return Refusal.REVOKED, None
    now_ms = int(now.timestamp() * 1000)
    if not verify_request(
        load_public_key(doctor.public_key),
        request.case_id,
        request.doctor_id,
        request.timestamp,
        request.signature,
        now_ms,
    ):
        return Refusal.BAD_SIGNATURE, None
    fingerprint = hashlib.sha256(request.signature.encode()).hexdigest()
    seen = session.scalar(select(ImageAccess.id).where(ImageAccess.signature_sha256 == fingerprint))
    if seen is not None:
        return Refusal.REPLAY, None
    case = session.get(PatientCase, request.case_id)
    if case is None or case.status in (CaseStatus.SETTLED, CaseStatus.FAILED):
        return Refusal.SETTLED, fingerprint
    seat = session.scalar(
        select(Seat.id).where(Seat.case_id == request.case_id, Seat.doctor_id == request.doctor_id)
    )
    if seat is None:
        return Refusal.NO_SEAT, fingerprint
    served = select(ImageAccess).where(ImageAccess.result == SERVED)
    viewers = set(
        session.scalars(
            select(ImageAccess.doctor_id)
            .where(ImageAccess.case_id == request.case_id, ImageAccess.result == SERVED)
            .distinct()
        )
    )
    views_today = session.scalar(
        select(func.count()).select_from(
            served.where(
                ImageAccess.doctor_id == request.doctor_id,
                ImageAccess.at > now - timedelta(days=1),
            ).subquery()
        )
    )
    cap = over_caps(
        caps,
        already_viewer=request.doctor_id in viewers,
        viewers=len(viewers),
        views_today=int(views_today or 0),
    )
    return cap, fingerprint


@read_only
def awaiting_seat(session: Session, request: ImageRequest, now: datetime, caps: AccessCaps) -> bool:
    """True when everything but the seat is in order (its message may be on its way)."""
    refusal, _ = _refusal(session, request, now, caps)
    return refusal is Refusal.NO_SEAT


@unit_of_work
def decide(session: Session, request: ImageRequest, *, now: datetime, caps: AccessCaps) -> str:
    """Serve or refuse, and record it; returns ``served`` or the refusal's code."""
    refusal, fingerprint = _refusal(session, request, now, caps)
    result = SERVED if refusal is None else refusal.value
    if not _ID.fullmatch(request.case_id) or not _ID.fullmatch(request.doctor_id):
        return result  # nothing sensible to record against
    session.add(
        ImageAccess(
            case_id=request.case_id,
            doctor_id=request.doctor_id,
            at=now,
            result=result,
            # Only a verified signature is remembered: it cannot be honoured twice.
            signature_sha256=fingerprint if refusal is None else None,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        return Refusal.REPLAY.value  # the same signed request, raced
    return result


@read_only
def access_log(session: Session, case_id: str, patient_token_hash: str) -> list[AccessRecord]:
    """Every image request on this case, for its patient (doctor pseudonyms, never names)."""
    import hmac

    case = session.get(PatientCase, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    if not hmac.compare_digest(case.patient_token_hash.encode(), patient_token_hash.encode()):
        raise WrongPatientToken(case_id)
    rows = session.scalars(
        select(ImageAccess).where(ImageAccess.case_id == case_id).order_by(ImageAccess.id)
    )
    return [AccessRecord(r.doctor_id, r.at, r.result) for r in rows]
