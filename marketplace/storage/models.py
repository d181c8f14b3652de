"""ORM models of the marketplace's own store: doctors, its view of cases, claims, votes,
ledger, research rows, and the outbox/inbox of its messages with the clinic.

No patient data: a case arrives as the clinic's ``case.opened`` message (a random id and the
model's output); the patient's token, image and failures stay in the clinic's store.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from infra.mailbox import InboxMixin, OutboxMixin
from infra.sqltypes import UTCDateTime
from marketplace.domain.status import MARKET_STATUSES, CaseStatus
from marketplace.storage.base import Base


class CaseStatusText(TypeDecorator[CaseStatus]):
    """A market status (open, under review, settled) stored as its text value; anything else
    is refused, never stored or loaded (queued and failed cases are the clinic's)."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: CaseStatus | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        status = CaseStatus(value)
        if status not in MARKET_STATUSES:
            raise ValueError(f"a market case is never {status.value!r}")
        return status.value

    def process_result_value(self, value: str | None, dialect: Dialect) -> CaseStatus | None:
        if value is None:
            return None
        status = CaseStatus(value)
        if status not in MARKET_STATUSES:
            raise ValueError(f"a market case is never {status.value!r}")
        return status


class Doctor(Base):
    """A reviewing doctor; only the sha256 of the API token is stored."""

    __tablename__ = "doctors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(120))
    specialty: Mapped[str] = mapped_column(String(80))
    wallet_address: Mapped[str | None] = mapped_column(String(42))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reputation: Mapped[int] = mapped_column(Integer)
    # Beta-reputation evidence: weighted counts of agreeing / dissenting votes.
    beta_agree: Mapped[float] = mapped_column(Float, default=0.0)
    beta_dissent: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ResearchRow(Base):
    """One anonymized row per settled case: no image, patient or doctor identifier."""

    __tablename__ = "research_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    backbone: Mapped[str] = mapped_column(String(64))
    model_label: Mapped[str] = mapped_column(String(16))
    confidence_bucket: Mapped[str] = mapped_column(String(16))
    diagnosis: Mapped[str] = mapped_column(String(16))
    reviewers: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[float] = mapped_column(Float)
    # The model found the image unlike its training data (a quasi-identifier: see anonymize).
    unfamiliar: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The model version's name on its passport ("lenet v2"): in the CSV as model_version, a
    # quasi-identifier (few cases per version early on). None: settled before passports.
    passport_version: Mapped[str | None] = mapped_column(String(80))
    # The checkpoint sha256 of the model that predicted the case: a sale of the data set pays
    # the royalty pools of the versions whose rows it contains. Never in the CSV.
    model_version: Mapped[str | None] = mapped_column(String(64))
    # Set when the k-anonymous release (the Ocean publisher) put the row out; only then may
    # anyone outside the marketplace see it. Strictly increasing from one release to the next.
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    published_ref: Mapped[str | None] = mapped_column(String(200))


class Case(Base):
    """The market's view of a case: opened by the clinic's message, then reviewed and settled.

    Statuses are only ``open``, ``under_review`` and ``settled`` here.
    """

    __tablename__ = "cases"
    __table_args__ = (
        Index("ix_cases_status_submitted", "status", "submitted_at"),
        Index("ix_cases_predicted_at", "predicted_at"),  # the model serving now (teaching)
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[CaseStatus] = mapped_column(CaseStatusText())
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Model output (opened by the MPC parties at the clinic, sent in ``case.opened``).
    predicted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    model_label: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    backbone: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    # The unfamiliarity bit opened with the prediction: the confidence is not trusted.
    unfamiliar: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The model version's name on its passport ("lenet v2"), the passport (the data NFT's
    # address), and False when party 1 served it unattested; None: an older clinic's case.
    passport_version: Mapped[str | None] = mapped_column(String(80))
    passport_id: Mapped[str | None] = mapped_column(String(42))
    model_attested: Mapped[bool | None] = mapped_column(Boolean)
    # Review market state.
    bounty: Mapped[int | None] = mapped_column(BigInteger)
    min_tier: Mapped[int] = mapped_column(Integer, default=0)
    # Votes the consensus rule waits for (3, widened to 5 and 7 on disagreement); the seats
    # doctors can claim follow the escalation level instead (``domain.seats``).
    reviewers_needed: Mapped[int] = mapped_column(Integer, default=0)
    claims_count: Mapped[int] = mapped_column(Integer, default=0)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    review_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Settlement.
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    diagnosis: Mapped[str | None] = mapped_column(String(16))
    agreement: Mapped[float | None] = mapped_column(Float)
    reviewers: Mapped[int | None] = mapped_column(Integer)
    research_row_id: Mapped[int | None] = mapped_column(ForeignKey("research_rows.id"), unique=True)
    # The model this settled case taught (the clinic's ``cases.taught``): a case teaches once.
    taught_model_sha256: Mapped[str | None] = mapped_column(String(64))


class ModelParent(Base):
    """A fine-tuned model and the model it was fine-tuned from (``cases.taught``), so that a
    case that taught a parent is known to have taught its descendants too."""

    __tablename__ = "model_parents"

    model_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    parent_sha256: Mapped[str] = mapped_column(String(64))
    taught_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Claim(Base):
    """A doctor's seat on a case's panel: never freed (at most ``MarketPolicy.seats`` of the
    case's escalation level per case)."""

    __tablename__ = "claims"
    __table_args__ = (UniqueConstraint("case_id", "doctor_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    doctor_id: Mapped[str] = mapped_column(ForeignKey("doctors.id"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Vote(Base):
    """A sealed vote: hidden from everyone until the case settles, then disclosed."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("case_id", "doctor_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), index=True)
    doctor_id: Mapped[str] = mapped_column(ForeignKey("doctors.id"), index=True)
    label: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    salt: Mapped[str] = mapped_column(String(64))
    commitment: Mapped[str] = mapped_column(String(64), unique=True)
    cast_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LedgerTransaction(Base):
    """A balanced group of ledger entries (their amounts sum to zero)."""

    __tablename__ = "ledger_transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LedgerEntry(Base):
    """One leg of a double-entry transaction; amounts are integer credits."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account: Mapped[str] = mapped_column(String(80), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class RateEvent(Base):
    """One event a rate limit counts (a doctor's claim, a self-registration), kept in the store
    so that every process and every restart counts the same events."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class Outbox(OutboxMixin, Base):
    """Messages to the clinic (``seat.granted``, ``case.settled``), committed with their cause."""

    __tablename__ = "outbox"


class Inbox(InboxMixin, Base):
    """Ids of the clinic's messages applied here (``case.opened``): each takes effect once."""

    __tablename__ = "inbox"


class Hospital(Base):
    """A hospital of the federation, paid royalties for its data; known by its pseudonym (the
    one in the contribution files). Only the sha256 of its API token is stored."""

    __tablename__ = "hospitals"

    pseudonym: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(120))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ModelContribution(Base):
    """A model version's contribution measurement, imported from its contribution file."""

    __tablename__ = "model_contributions"

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(40))
    utility: Mapped[str] = mapped_column(String(200))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HospitalShare(Base):
    """One hospital's share (for payment) and raw values (for statements) in one version."""

    __tablename__ = "hospital_shares"
    __table_args__ = (UniqueConstraint("model_version", "pseudonym"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_version: Mapped[str] = mapped_column(
        ForeignKey("model_contributions.model_version"), index=True
    )
    pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    share: Mapped[float] = mapped_column(Float)
    shapley: Mapped[float | None] = mapped_column(Float)
    shapley_se: Mapped[float | None] = mapped_column(Float)
    loss_delta_tokens: Mapped[float | None] = mapped_column(Float)
    data_size: Mapped[int | None] = mapped_column(Integer)


class OceanSale(Base):
    """A purchase of the data set on the fixed-rate exchange (a ``Swapped`` event), booked once.

    Identified by the block's hash and the log's index: a restarted node re-serves the same
    blocks (same hashes), a fresh chain's blocks have new hashes (its sales are new sales).
    """

    __tablename__ = "ocean_sales"
    __table_args__ = (UniqueConstraint("block_hash", "log_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(Integer)
    block_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    block_number: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))
    sold_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # OCEAN wei exceed 64 bits: decimal text.
    ocean_wei: Mapped[str] = mapped_column(String(80))
    credits: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    transaction_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_transactions.id"))


class SaleScan(Base):
    """How far the sales scan has read one exchange on one chain (genesis hash): an
    optimisation only, booking is once per sale whatever the cursor says."""

    __tablename__ = "ocean_sale_scans"

    genesis_hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    exchange_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    next_block: Mapped[int] = mapped_column(BigInteger)


class RoyaltyPayout(Base):
    """A version's pool paid out for the payout period ending at ``period_end``: once each."""

    __tablename__ = "royalty_payouts"
    __table_args__ = (UniqueConstraint("period_end", "model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    model_version: Mapped[str] = mapped_column(String(64))
    pool: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
