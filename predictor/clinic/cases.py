"""The clinic's case lifecycle (party 0): submission, prediction, failure, seats, diagnosis.

Public functions commit their own transaction (one call = one transaction). The two message
handlers (``apply_seat_granted``, ``apply_case_settled``) instead run inside the inbox's unit
of work, so a message and its effect commit together. Only the sha256 hex of the patient's
token is stored or compared.
"""

from __future__ import annotations

import hmac
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from infra import mailbox
from infra.messaging import Envelope
from marketplace.domain.consensus import LABELS
from marketplace.domain.status import CaseStatus
from marketplace.errors import CaseNotFound, InvalidInput, WrongPatientToken
from marketplace.messages import MARKETPLACE, CaseOpened, CaseSettled, SeatGranted
from marketplace.storage.unit import read_only, unit_of_work
from predictor.clinic.models import ClinicOutbox, PatientCase, Seat
from predictor.clinic.queue import UPLOAD_HOLD, UPLOAD_OWNER

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


#: What the patient reads when the model flagged their image as unlike its training data.
UNFAMILIAR_NOTE = (
    "The model is not sure about this kind of image: it looks unlike the brain MRI slices "
    "it was trained on (another scanner, sequence, orientation, or not a brain MRI), so its "
    "answer and confidence should not be relied on. Doctors will look at it carefully."
)


#: What the patient reads when the model that answered was served without a passport.
UNATTESTED_NOTE = (
    "The model that answered was served without a passport: no statement by its owner on "
    "the chain says which model this is or how it was trained and tested."
)


@dataclass(frozen=True)
class ServedModel:
    """Which model version made a prediction, as party 1 announced it (issue 15)."""

    model_version: str
    passport_id: str | None
    #: False: party 1 served it with --allow-unattested (no passport vouches for it)
    attested: bool


@dataclass(frozen=True)
class ModelPrediction:
    label: str
    confidence: float
    backbone: str
    #: the encrypted program's one bit: the image is unlike the training data
    unfamiliar: bool = False
    #: None: predicted before passports (issue 15)
    model: ServedModel | None = None


@dataclass(frozen=True)
class Diagnosis:
    label: str
    settled_at: datetime
    reviewers: int
    agreement: float


@dataclass(frozen=True)
class PatientView:
    """What the patient may see of their case: never votes or reviewers' identities."""

    case_id: str
    status: CaseStatus
    submitted_at: datetime
    prediction: ModelPrediction | None
    diagnosis: Diagnosis | None
    failure_reason: str | None
    #: the patient's choice at upload: the settled case may teach the model
    teaching_consent: bool = False

    def to_json(self) -> dict[str, object]:
        view: dict[str, object] = {
            "case_id": self.case_id,
            "status": self.status.value,
            "submitted_at": self.submitted_at.isoformat(),
            "prediction": None
            if self.prediction is None
            else {
                "label": self.prediction.label,
                "confidence": self.prediction.confidence,
                "backbone": self.prediction.backbone,
                "unfamiliar": self.prediction.unfamiliar,
            },
            "diagnosis": None
            if self.diagnosis is None
            else {
                "label": self.diagnosis.label,
                "settled_at": self.diagnosis.settled_at.isoformat(),
                "reviewers": self.diagnosis.reviewers,
                "agreement": self.diagnosis.agreement,
            },
        }
        model = self.prediction.model if self.prediction is not None else None
        view["model_version"] = model.model_version if model else None
        view["passport_id"] = model.passport_id if model else None
        view["model_attested"] = model.attested if model else None
        if model is not None and not model.attested:
            view["model_note"] = UNATTESTED_NOTE
        unfamiliar = self.prediction is not None and self.prediction.unfamiliar
        view["unfamiliar"] = unfamiliar
        if unfamiliar:
            view["unfamiliar_note"] = UNFAMILIAR_NOTE
        view["teaching_consent"] = self.teaching_consent
        if self.status is CaseStatus.FAILED:
            view["failure_reason"] = self.failure_reason
        return view


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise InvalidInput("now must be a timezone-aware datetime")


@unit_of_work
def create_case(
    session: Session, *, patient_token_hash: str, now: datetime, teaching_consent: bool = False
) -> str:
    """Store a new ``queued`` case and return its unguessable id (uuid4 hex).

    The case is held by its upload (no worker takes it) until
    :func:`predictor.clinic.queue.release_upload`, once its image is stored.
    ``teaching_consent``: the patient's choice that the settled case may teach the model.
    """
    if not _SHA256_HEX.fullmatch(patient_token_hash or ""):
        raise InvalidInput("patient_token_hash must be a lowercase sha256 hex digest")
    if not isinstance(teaching_consent, bool):
        raise InvalidInput("teaching_consent must be true or false")
    _require_aware(now)
    case_id = uuid.uuid4().hex
    session.add(
        PatientCase(
            id=case_id,
            patient_token_hash=patient_token_hash,
            status=CaseStatus.QUEUED.value,
            submitted_at=now,
            lease_owner=UPLOAD_OWNER,
            lease_expires_at=now + UPLOAD_HOLD,
            teaching_consent=teaching_consent,
        )
    )
    return case_id


@unit_of_work
def record_prediction(
    session: Session,
    case_id: str,
    *,
    label: str,
    confidence: float,
    backbone: str,
    model_sha256: str,
    now: datetime,
    worker: str | None = None,
    unfamiliar: bool = False,
    model: ServedModel | None = None,
) -> bool:
    """Record a queued case's opened prediction and send it to the marketplace for review.

    Idempotent: only the first call moves the case ``queued`` -> ``open`` and posts its
    ``case.opened`` message (in the same transaction); later calls return False. So when two
    party pairs computed the same case (a lease expired), only the first result counts;
    ``worker`` (the pair's process that computed it) is kept as ``predicted_by``.

    ``confidence`` is the calibrated probability of ``label``; at a screening threshold
    below 0.5 a "tumor" label may carry less than 0.5. ``unfamiliar`` is the MPC program's
    bit: the image is unlike the training data. ``model`` is the version party 1 announced
    (its passport, or unattested).
    """
    if label not in LABELS:
        raise InvalidInput(f"label must be one of {LABELS}")
    if not isinstance(confidence, int | float) or math.isnan(confidence):
        raise InvalidInput("confidence must be a number")
    if not (0.0 <= confidence <= 1.0):
        raise InvalidInput("confidence must be in [0, 1]")
    if confidence < 0.5 and label != "tumor":
        raise InvalidInput("only a screening-positive tumor label may carry confidence < 0.5")
    if not isinstance(unfamiliar, bool):
        raise InvalidInput("unfamiliar must be true or false")
    if not backbone or len(backbone) > 64:
        raise InvalidInput("backbone must be a short non-empty name")
    if not _SHA256_HEX.fullmatch(model_sha256 or ""):
        raise InvalidInput("model_sha256 must be a lowercase sha256 hex digest")
    _require_aware(now)
    case = session.get(PatientCase, case_id, with_for_update=True)
    if case is None:
        raise CaseNotFound(case_id)
    if case.status != CaseStatus.QUEUED:
        return False
    case.status = CaseStatus.OPEN.value
    case.predicted_at = now
    case.model_label = label
    case.confidence = float(confidence)
    case.backbone = backbone
    case.model_sha256 = model_sha256
    case.predicted_by = worker
    case.unfamiliar = unfamiliar
    if model is not None:
        case.model_version = model.model_version
        case.passport_id = model.passport_id
        case.model_attested = model.attested
    case.lease_owner = case.lease_expires_at = None
    opened = CaseOpened(
        case_id=case_id,
        submitted_at=case.submitted_at,
        predicted_at=now,
        model_label=label,
        confidence=float(confidence),
        backbone=backbone,
        model_sha256=model_sha256,
        unfamiliar=unfamiliar,
        model_version=model.model_version if model else None,
        passport_id=model.passport_id if model else None,
        model_attested=model.attested if model else None,
    )
    mailbox.post(
        session,
        ClinicOutbox,
        destination=MARKETPLACE,
        type=CaseOpened.TYPE,
        body=opened.body(),
        now=now,
    )
    return True


@unit_of_work
def record_inference_failure(session: Session, case_id: str, *, reason: str, now: datetime) -> None:
    """Mark a queued case ``failed`` with a patient-visible reason (no-op once predicted)."""
    _require_aware(now)
    if session.get(PatientCase, case_id) is None:
        raise CaseNotFound(case_id)
    session.execute(
        update(PatientCase)
        .where(PatientCase.id == case_id, PatientCase.status == CaseStatus.QUEUED.value)
        .values(
            status=CaseStatus.FAILED.value,
            failure_reason=(reason or "inference failed")[:2000],
            lease_owner=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )


@read_only
def unfinished_case_ids(session: Session) -> list[str]:
    """Ids of cases still ``queued``, oldest first (party 0 re-runs them after a crash)."""
    rows = session.scalars(
        select(PatientCase.id)
        .where(PatientCase.status == CaseStatus.QUEUED.value)
        .order_by(PatientCase.submitted_at, PatientCase.id)
    )
    return list(rows)


@read_only
def decided_among(session: Session, case_ids: Sequence[str]) -> list[str]:
    """Those of ``case_ids`` no longer ``queued`` (predicted or failed, by any party pair)."""
    if not case_ids:
        return []
    rows = session.scalars(
        select(PatientCase.id).where(
            PatientCase.id.in_(list(case_ids)), PatientCase.status != CaseStatus.QUEUED.value
        )
    )
    return list(rows)


@unit_of_work
def discard_unacknowledged(session: Session, case_ids: Sequence[str]) -> list[str]:
    """Delete those of ``case_ids`` still ``queued``: cases whose upload never completed.

    Party 0 calls it at start for queued cases without an image: the image is renamed to
    its case's id after the row commits and the patient's 202 goes out after that, so such a
    case was never acknowledged to anyone (party 0 died in between). Returns the deleted ids.
    """
    if not case_ids:
        return []
    deleted = session.scalars(
        delete(PatientCase)
        .where(PatientCase.id.in_(list(case_ids)), PatientCase.status == CaseStatus.QUEUED.value)
        .returning(PatientCase.id)
        .execution_options(synchronize_session=False)
    )
    return list(deleted)


@read_only
def patient_view(session: Session, case_id: str, patient_token_hash: str) -> PatientView:
    """What the patient may see: status, model prediction and final diagnosis - never votes."""
    case = session.get(PatientCase, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    if not hmac.compare_digest(case.patient_token_hash.encode(), patient_token_hash.encode()):
        raise WrongPatientToken(case_id)
    status = case.case_status
    prediction = None
    if case.model_label is not None and case.confidence is not None:
        served = (
            ServedModel(case.model_version, case.passport_id, bool(case.model_attested))
            if case.model_version is not None
            else None
        )
        prediction = ModelPrediction(
            case.model_label, case.confidence, case.backbone or "", bool(case.unfamiliar), served
        )
    diagnosis = None
    if status is CaseStatus.SETTLED and case.settled_at is not None and case.diagnosis:
        diagnosis = Diagnosis(
            case.diagnosis, case.settled_at, case.reviewers or 0, case.agreement or 0.0
        )
    return PatientView(
        case_id=case.id,
        status=status,
        submitted_at=case.submitted_at,
        prediction=prediction,
        diagnosis=diagnosis,
        failure_reason=case.failure_reason if status is CaseStatus.FAILED else None,
        teaching_consent=bool(case.teaching_consent),
    )


# -- message handlers (run inside the inbox's unit of work) ------------------------------


def apply_seat_granted(session: Session, envelope: Envelope) -> None:
    """Record a panel seat; the case shows ``under_review`` to its patient from now on."""
    seat = SeatGranted.parse(envelope.body)
    case = session.get(PatientCase, seat.case_id, with_for_update=True)
    if case is None:
        raise CaseNotFound(seat.case_id)
    exists = session.scalar(
        select(Seat.id).where(Seat.case_id == seat.case_id, Seat.doctor_id == seat.doctor_id)
    )
    if exists is None:
        session.add(
            Seat(case_id=seat.case_id, doctor_id=seat.doctor_id, granted_at=seat.granted_at)
        )
    if case.status == CaseStatus.OPEN:
        case.status = CaseStatus.UNDER_REVIEW.value


def apply_case_settled(session: Session, envelope: Envelope) -> None:
    """Record the panel's diagnosis for the patient (image access ends with it)."""
    settled = CaseSettled.parse(envelope.body)
    case = session.get(PatientCase, settled.case_id, with_for_update=True)
    if case is None:
        raise CaseNotFound(settled.case_id)
    if case.status == CaseStatus.SETTLED:
        return
    case.status = CaseStatus.SETTLED.value
    case.settled_at = settled.settled_at
    case.diagnosis = settled.diagnosis
    case.reviewers = settled.reviewers
    case.agreement = round(settled.agreement, 4)


#: The clinic's inbox: which message type each handler applies.
HANDLERS = {SeatGranted.TYPE: apply_seat_granted, CaseSettled.TYPE: apply_case_settled}
