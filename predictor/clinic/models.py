"""ORM models of the clinic's store (its own metadata and migration history)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from infra.mailbox import InboxMixin, OutboxMixin
from infra.sqltypes import UTCDateTime
from marketplace.domain.status import CaseStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class ClinicBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PatientCase(ClinicBase):
    """A patient's case as the clinic knows it: never a vote or a bounty."""

    __tablename__ = "patient_cases"
    __table_args__ = (Index("ix_patient_cases_status_submitted", "status", "submitted_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    patient_token_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # The opened prediction (the only output of the MPC program).
    predicted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    model_label: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    backbone: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    # The panel's diagnosis, from the marketplace's case.settled message.
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    diagnosis: Mapped[str | None] = mapped_column(String(16))
    reviewers: Mapped[int | None] = mapped_column(Integer)
    agreement: Mapped[float | None] = mapped_column(Float)
    # The inference queue (:mod:`predictor.clinic.queue`): which worker (party pair and
    # process) holds a queued case, until when, how often it was taken, and who recorded it.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    predicted_by: Mapped[str | None] = mapped_column(String(64))
    # The MPC program's one bit: the image is unlike the model's training data.
    unfamiliar: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Which model version made the prediction, as party 1 announced it (issue 15): its
    # passport on chain, or model_attested False when served with --allow-unattested.
    model_version: Mapped[str | None] = mapped_column(String(80))
    passport_id: Mapped[str | None] = mapped_column(String(42))
    model_attested: Mapped[bool | None] = mapped_column(Boolean)
    # The patient's choice at upload (issue 19): the case may teach the model once settled.
    teaching_consent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The fine-tuning round that took the case (``predictor.teach``), and when its image was
    # deleted: after its round, or when consent's retention ran out first.
    teaching_round_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("teaching_rounds.id")
    )
    image_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @property
    def case_status(self) -> CaseStatus:
        return CaseStatus(self.status)


class TeachingRound(ClinicBase):
    """One encrypted fine-tune on settled, consenting, familiar cases (``predictor.teach``)."""

    __tablename__ = "teaching_rounds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cases: Mapped[int] = mapped_column(Integer)
    #: running, promoted, refused or failed (the fine-tune could not run: see ``reasons``)
    outcome: Mapped[str] = mapped_column(String(16))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    candidate_sha256: Mapped[str | None] = mapped_column(String(64))
    epsilon: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[str | None] = mapped_column(Text)


class Seat(ClinicBase):
    """A panel seat the marketplace granted: the doctor may see this case's image."""

    __tablename__ = "seats"
    __table_args__ = (UniqueConstraint("case_id", "doctor_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("patient_cases.id"), index=True)
    doctor_id: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EnrolledDoctor(ClinicBase):
    """A doctor the clinic vetted and may show images to: identity, licence, public key.

    ``doctor_id`` is the doctor's pseudonym at the marketplace (what seat messages name);
    the name and licence are for the clinic's auditors and never leave the clinic.
    """

    __tablename__ = "enrolled_doctors"

    doctor_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    licence: Mapped[str] = mapped_column(String(120))
    public_key: Mapped[str] = mapped_column(Text)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ImageAccess(ClinicBase):
    """One image request and what the clinic answered: the patient's audit trail."""

    __tablename__ = "image_access"
    __table_args__ = (Index("ix_image_access_doctor_at", "doctor_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(32), index=True)
    doctor_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: "served", or why not (not_enrolled, bad_signature, replay, no_seat, ...).
    result: Mapped[str] = mapped_column(String(32))
    #: sha256 of a verified signature: the same signed request is never honoured twice.
    signature_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)


class ClinicOutbox(OutboxMixin, ClinicBase):
    __tablename__ = "outbox"


class ClinicInbox(InboxMixin, ClinicBase):
    __tablename__ = "inbox"
