"""ORM models of the clinic's store (its own metadata and migration history)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
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

    @property
    def case_status(self) -> CaseStatus:
        return CaseStatus(self.status)


class Seat(ClinicBase):
    """A panel seat the marketplace granted: the doctor may see this case's image."""

    __tablename__ = "seats"
    __table_args__ = (UniqueConstraint("case_id", "doctor_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("patient_cases.id"), index=True)
    doctor_id: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ClinicOutbox(OutboxMixin, ClinicBase):
    __tablename__ = "outbox"


class ClinicInbox(InboxMixin, ClinicBase):
    __tablename__ = "inbox"
