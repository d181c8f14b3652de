"""Case lifecycle on the patient side (party 0): submission, prediction, failure, patient view.

Transactions: every function here commits its own transaction (one call = one
transaction) and rolls back on error, so pass a session with no pending work.
Only the sha256 hex of the patient's token is stored or compared.
"""

from __future__ import annotations

import hmac
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.domain import ledger as ledger_domain
from marketplace.domain.consensus import LABELS
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.domain.pricing import price_bounty
from marketplace.domain.status import CaseStatus
from marketplace.errors import CaseNotFound, InvalidInput, WrongPatientToken
from marketplace.storage.models import Case
from marketplace.storage.unit import read_only, unit_of_work

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelPrediction:
    label: str
    confidence: float
    backbone: str


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
        if self.status is CaseStatus.FAILED:
            view["failure_reason"] = self.failure_reason
        return view


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise InvalidInput("now must be a timezone-aware datetime")


@unit_of_work
def create_case(session: Session, *, patient_token_hash: str, now: datetime) -> str:
    """Store a new ``queued`` case and return its unguessable id (uuid4 hex)."""
    if not _SHA256_HEX.fullmatch(patient_token_hash or ""):
        raise InvalidInput("patient_token_hash must be a lowercase sha256 hex digest")
    _require_aware(now)
    case_id = uuid.uuid4().hex
    session.add(
        Case(
            id=case_id,
            patient_token_hash=patient_token_hash,
            status=CaseStatus.QUEUED,
            submitted_at=now,
            min_tier=0,
            reviewers_needed=0,
            claims_count=0,
            escalation_level=0,
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
    policy: MarketPolicy = DEFAULT_POLICY,
) -> bool:
    """Open a queued case for review: price its bounty, fund its escrow, set the deadline.

    Idempotent: only the first call for a case moves it ``queued`` -> ``open``;
    any later call returns False and changes nothing.
    """
    if label not in LABELS:
        raise InvalidInput(f"label must be one of {LABELS}")
    if not isinstance(confidence, int | float) or math.isnan(confidence):
        raise InvalidInput("confidence must be a number")
    if not (0.5 <= confidence <= 1.0):
        raise InvalidInput("confidence must be in [0.5, 1]")
    if not backbone or len(backbone) > 64:
        raise InvalidInput("backbone must be a short non-empty name")
    if not _SHA256_HEX.fullmatch(model_sha256 or ""):
        raise InvalidInput("model_sha256 must be a lowercase sha256 hex digest")
    _require_aware(now)
    if session.get(Case, case_id) is None:
        raise CaseNotFound(case_id)
    bounty = price_bounty(float(confidence), policy.pricing)
    moved = session.execute(
        update(Case)
        .where(Case.id == case_id, Case.status == CaseStatus.QUEUED)
        .values(
            status=CaseStatus.OPEN,
            predicted_at=now,
            model_label=label,
            confidence=float(confidence),
            backbone=backbone,
            model_sha256=model_sha256,
            bounty=bounty,
            min_tier=policy.reputation.tiers.case_tier(bounty),
            reviewers_needed=policy.panel.panel_size,
            review_deadline=now + policy.review_window,
        )
        .returning(Case.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if moved is None:
        return False
    ledger.post(
        session,
        kind="fund_escrow",
        case_id=case_id,
        postings=ledger_domain.transfer(
            ledger_domain.TREASURY, ledger_domain.escrow_account(case_id), bounty
        ),
        now=now,
    )
    return True


@unit_of_work
def record_inference_failure(session: Session, case_id: str, *, reason: str, now: datetime) -> None:
    """Mark a queued case ``failed`` with a patient-visible reason (no-op once predicted)."""
    _require_aware(now)
    if session.get(Case, case_id) is None:
        raise CaseNotFound(case_id)
    session.execute(
        update(Case)
        .where(Case.id == case_id, Case.status == CaseStatus.QUEUED)
        .values(status=CaseStatus.FAILED, failure_reason=(reason or "inference failed")[:2000])
        .execution_options(synchronize_session=False)
    )


@read_only
def unfinished_case_ids(session: Session) -> list[str]:
    """Ids of cases still ``queued``, oldest first (party 0 re-runs them after a crash)."""
    rows = session.scalars(
        select(Case.id).where(Case.status == CaseStatus.QUEUED).order_by(Case.submitted_at, Case.id)
    )
    return list(rows)


@read_only
def patient_view(session: Session, case_id: str, patient_token_hash: str) -> PatientView:
    """What the patient may see: status, model prediction and final diagnosis - never votes."""
    case = session.get(Case, case_id)
    if case is None:
        raise CaseNotFound(case_id)
    if not hmac.compare_digest(case.patient_token_hash.encode(), patient_token_hash.encode()):
        raise WrongPatientToken(case_id)
    status = CaseStatus(case.status)
    prediction = None
    if case.model_label is not None and case.confidence is not None:
        prediction = ModelPrediction(case.model_label, case.confidence, case.backbone or "")
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
    )
