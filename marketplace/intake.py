"""A case reaches the market: the clinic's ``case.opened`` becomes an open, priced, funded case.

:func:`open_case` runs inside the caller's transaction (the inbox handler's unit of work, so
the inbox row and the case commit together, or neither does); it never commits itself.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from sqlalchemy import Insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.domain import ledger as ledger_domain
from marketplace.domain import royalties
from marketplace.domain.consensus import LABELS
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.domain.pricing import price_bounty
from marketplace.domain.status import CaseStatus
from marketplace.errors import InvalidInput
from marketplace.messages import CaseOpened
from marketplace.storage.models import Case
from marketplace.storage.unit import unit_of_work

#: Case ids are the clinic's uuid4 hex: the doctor API and image links accept only these.
_CASE_ID = re.compile(r"[0-9a-f]{32}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def validate(msg: CaseOpened, now: datetime) -> None:
    """Raise :class:`InvalidInput` unless the message can open a case (no effect yet)."""
    if now.tzinfo is None:
        raise InvalidInput("now must be a timezone-aware datetime")
    if not _CASE_ID.fullmatch(msg.case_id):
        raise InvalidInput("case_id must be 32 lowercase hex digits")
    if msg.model_label not in LABELS:
        raise InvalidInput(f"model_label must be one of {LABELS}")
    confidence = msg.confidence
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise InvalidInput("confidence must be a number")
    if math.isnan(confidence) or not 0.0 <= confidence <= 1.0:
        raise InvalidInput("confidence must be in [0, 1]")
    if confidence < 0.5 and msg.model_label != "tumor":
        raise InvalidInput("only a screening-positive tumor label may carry confidence < 0.5")
    if not msg.backbone or len(msg.backbone) > 64:
        raise InvalidInput("backbone must be a short non-empty name")
    if not _SHA256_HEX.fullmatch(msg.model_sha256):
        raise InvalidInput("model_sha256 must be a lowercase sha256 hex digest")
    if msg.submitted_at.tzinfo is None or msg.predicted_at.tzinfo is None:
        raise InvalidInput("submitted_at and predicted_at must carry a timezone")


def open_case(
    session: Session, msg: CaseOpened, *, now: datetime, policy: MarketPolicy = DEFAULT_POLICY
) -> bool:
    """Put a predicted case in the pool: price its bounty, fund its escrow, set the deadline.

    An unfamiliar case (the model's confidence is not trusted) is priced at the ceiling, the
    top bounty tier. The case's royalty fee (``policy.royalty_fee_per_case``) goes into the
    pool of the model version that predicted it (``model_sha256``, the checkpoint's sha256).

    Idempotent by case id: if the case exists already (a redelivery, or a second message about
    it), nothing changes and the answer is False. The review window starts ``now``, when the
    case reaches the market (a message delayed by an outage still gets its full window).
    """
    validate(msg, now)
    bounty = price_bounty(float(msg.confidence), policy.pricing, unfamiliar=msg.unfamiliar)
    row = {
        "id": msg.case_id,
        "status": CaseStatus.OPEN,
        "submitted_at": msg.submitted_at,
        "predicted_at": msg.predicted_at,
        "model_label": msg.model_label,
        "confidence": float(msg.confidence),
        "backbone": msg.backbone,
        "model_sha256": msg.model_sha256,
        "unfamiliar": msg.unfamiliar,
        "passport_version": msg.model_version,
        "passport_id": msg.passport_id,
        "model_attested": msg.model_attested,
        "bounty": bounty,
        "min_tier": policy.reputation.tiers.case_tier(bounty),
        "reviewers_needed": policy.panel.panel_size,
        "claims_count": 0,
        "escalation_level": 0,
        "review_deadline": now + policy.review_window,
    }
    # INSERT ... ON CONFLICT DO NOTHING: two deliveries racing on PostgreSQL cannot both open
    # (or fail on) the case; the loser sees no returned row.
    dialect = session.get_bind().dialect.name
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(Case).values(row).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(Case).values(row).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"open_case supports SQLite and PostgreSQL, not {dialect}")
    inserted = session.execute(statement.returning(Case.id)).scalar_one_or_none()
    if inserted is None:
        return False
    ledger.post(
        session,
        kind="fund_escrow",
        case_id=msg.case_id,
        postings=ledger_domain.transfer(
            ledger_domain.TREASURY, ledger_domain.escrow_account(msg.case_id), bounty
        ),
        now=now,
    )
    if policy.royalty_fee_per_case:
        # In the same transaction as the case (and the inbox row): booked exactly once.
        ledger.post(
            session,
            kind="royalty_fee",
            case_id=msg.case_id,
            postings=royalties.case_fee_postings(msg.model_sha256, policy.royalty_fee_per_case),
            now=now,
        )
    return True


#: :func:`open_case` as its own transaction, for callers outside an inbox (tests, tools).
open_case_now = unit_of_work(open_case)
