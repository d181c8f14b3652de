"""The messages between the clinic (party 0) and the marketplace: the whole contract.

Each organisation keeps its own store; these are the only facts that cross between them,
as signed envelopes (:mod:`infra.messaging`) written to the sender's outbox in the same
transaction as the change they report, and applied exactly once through the receiver's
inbox. Nothing here depends on votes before a case settles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

#: Organisation names: senders and audiences of envelopes, keys of peer tables.
CLINIC = "clinic"
MARKETPLACE = "marketplace"


class MessageError(ValueError):
    """A message body that does not match its type."""


def _time(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise MessageError(f"{name} must be an ISO timestamp") from exc
    if parsed.tzinfo is None:
        raise MessageError(f"{name} must carry a timezone")
    return parsed


def _text(body: dict[str, Any], name: str, max_len: int = 64) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise MessageError(f"{name} must be a short non-empty string")
    return value


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"{name} must be a number")
    return float(value)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise MessageError(f"{name} must be true or false")
    return value


def _optional_text(body: dict[str, Any], name: str, max_len: int) -> str | None:
    return None if body.get(name) is None else _text(body, name, max_len)


def _optional_flag(body: dict[str, Any], name: str) -> bool | None:
    return None if body.get(name) is None else _flag(body, name)


@dataclass(frozen=True)
class CaseOpened:
    """Clinic → marketplace: a predicted case needs review; what pricing and research need.

    No patient data: the case id is a random handle, the rest is the model's output.
    ``confidence`` is the calibrated probability of ``model_label`` (below 0.5 for a
    screening-positive "tumor" the model finds less likely than not); ``unfamiliar`` is the
    one bit the MPC program opens about the image being unlike the training data (absent in
    messages from clinics before issue 18: read as False).
    """

    TYPE: ClassVar[str] = "case.opened"
    case_id: str
    submitted_at: datetime
    predicted_at: datetime
    model_label: str
    confidence: float
    backbone: str
    model_sha256: str
    unfamiliar: bool = False
    #: the model version's name and passport (issue 15); None in messages from older clinics
    model_version: str | None = None
    passport_id: str | None = None
    #: False: the model was served without a passport (--allow-unattested); None: unknown
    model_attested: bool | None = None

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data["submitted_at"] = self.submitted_at.isoformat()
        data["predicted_at"] = self.predicted_at.isoformat()
        return data

    @classmethod
    def parse(cls, body: dict[str, Any]) -> CaseOpened:
        return cls(
            case_id=_text(body, "case_id"),
            submitted_at=_time(body.get("submitted_at"), "submitted_at"),
            predicted_at=_time(body.get("predicted_at"), "predicted_at"),
            model_label=_text(body, "model_label", 16),
            confidence=_number(body, "confidence"),
            backbone=_text(body, "backbone"),
            model_sha256=_text(body, "model_sha256"),
            unfamiliar=_flag(body, "unfamiliar"),
            model_version=_optional_text(body, "model_version", 80),
            passport_id=_optional_text(body, "passport_id", 42),
            model_attested=_optional_flag(body, "model_attested"),
        )


@dataclass(frozen=True)
class SeatGranted:
    """Marketplace → clinic: doctor ``doctor_id`` holds a seat on the case's panel."""

    TYPE: ClassVar[str] = "seat.granted"
    case_id: str
    doctor_id: str
    granted_at: datetime

    def body(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "doctor_id": self.doctor_id,
            "granted_at": self.granted_at.isoformat(),
        }

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SeatGranted:
        return cls(
            case_id=_text(body, "case_id"),
            doctor_id=_text(body, "doctor_id"),
            granted_at=_time(body.get("granted_at"), "granted_at"),
        )


@dataclass(frozen=True)
class CasesTaught:
    """Clinic → marketplace: these settled cases taught model ``model_sha256`` (a promoted
    round of encrypted fine-tuning, ``predictor.teach``), fine-tuned from ``parent_sha256``.

    A large round comes in several messages (at most :data:`MAX_CASES` ids each). It tells
    the marketplace which of its settled cases' patients consented to teaching: the doctor
    page shows each doctor only a count.
    """

    TYPE: ClassVar[str] = "cases.taught"
    MAX_CASES: ClassVar[int] = 2000
    model_sha256: str
    parent_sha256: str
    case_ids: tuple[str, ...]
    taught_at: datetime

    def body(self) -> dict[str, Any]:
        return {
            "model_sha256": self.model_sha256,
            "parent_sha256": self.parent_sha256,
            "case_ids": list(self.case_ids),
            "taught_at": self.taught_at.isoformat(),
        }

    @classmethod
    def parse(cls, body: dict[str, Any]) -> CasesTaught:
        ids = body.get("case_ids")
        if not isinstance(ids, list) or not 0 < len(ids) <= cls.MAX_CASES:
            raise MessageError(f"case_ids must be a list of 1 to {cls.MAX_CASES} case ids")
        if not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
            raise MessageError("case_ids must be short non-empty strings")
        return cls(
            model_sha256=_text(body, "model_sha256"),
            parent_sha256=_text(body, "parent_sha256"),
            case_ids=tuple(ids),
            taught_at=_time(body.get("taught_at"), "taught_at"),
        )


@dataclass(frozen=True)
class CaseSettled:
    """Marketplace → clinic: the panel's diagnosis, for the patient."""

    TYPE: ClassVar[str] = "case.settled"
    case_id: str
    diagnosis: str
    settled_at: datetime
    reviewers: int
    agreement: float

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data["settled_at"] = self.settled_at.isoformat()
        return data

    @classmethod
    def parse(cls, body: dict[str, Any]) -> CaseSettled:
        reviewers = body.get("reviewers")
        if isinstance(reviewers, bool) or not isinstance(reviewers, int) or reviewers <= 0:
            raise MessageError("reviewers must be a positive integer")
        return cls(
            case_id=_text(body, "case_id"),
            diagnosis=_text(body, "diagnosis", 16),
            settled_at=_time(body.get("settled_at"), "settled_at"),
            reviewers=reviewers,
            agreement=_number(body, "agreement"),
        )
