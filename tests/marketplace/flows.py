"""Helpers that drive real flows through the marketplace's functions (as the clinic or admin)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select

from marketplace import doctors, intake
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.messages import CLINIC, CaseOpened
from marketplace.storage.models import Outbox
from tests.marketplace.helpers import MODEL_SHA, T0


def case_opened(
    *,
    confidence: float = 0.9,
    label: str = "tumor",
    now: datetime = T0,
    case_id: str | None = None,
) -> CaseOpened:
    """The clinic's ``case.opened`` for a fresh case predicted at ``now``."""
    return CaseOpened(
        case_id=case_id or uuid.uuid4().hex,
        submitted_at=now,
        predicted_at=now,
        model_label=label,
        confidence=confidence,
        backbone="resnet18",
        model_sha256=MODEL_SHA,
    )


def open_case(
    session,
    *,
    confidence: float = 0.9,
    label: str = "tumor",
    now: datetime = T0,
    policy: MarketPolicy = DEFAULT_POLICY,
) -> str:
    """Open a case as the clinic's message does (in its own transaction); returns its id."""
    message = case_opened(confidence=confidence, label=label, now=now)
    assert intake.open_case_now(session, message, now=now, policy=policy)
    return message.case_id


def to_clinic(session, type: str | None = None) -> list[dict[str, Any]]:
    """Every message the marketplace posted for the clinic (delivered or not), oldest first,
    as ``{"type": ..., **body}``; only those of ``type`` when given."""
    session.expire_all()
    rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
    session.commit()  # end the read snapshot: the next read sees other sessions' commits
    assert all(row.destination == CLINIC for row in rows)
    found = [{"type": row.type, **json.loads(row.body)} for row in rows]
    return [m for m in found if type is None or m["type"] == type]


def make_doctors(session, n: int, reputation: int | None = None) -> list[tuple[str, str]]:
    return [
        doctors.create_doctor(
            session,
            display_name=f"Dr {i}",
            specialty="neuroradiology",
            reputation=reputation,
            now=T0,
        )
        for i in range(n)
    ]
