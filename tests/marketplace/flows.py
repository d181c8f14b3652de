"""Helpers that drive real flows through the storage functions (acting as party 0 or admin)."""

from __future__ import annotations

from datetime import datetime

from marketplace import cases, doctors
from tests.marketplace.helpers import MODEL_SHA, T0, token_hash


def open_case(session, *, confidence: float = 0.9, label: str = "tumor", now: datetime = T0, **kw):
    """Create a case and record its prediction, as party 0 does; returns the case id."""
    case_id = cases.create_case(session, patient_token_hash=token_hash("patient"), now=now)
    assert cases.record_prediction(
        session,
        case_id,
        label=label,
        confidence=confidence,
        backbone="resnet18",
        model_sha256=MODEL_SHA,
        now=now,
        **kw,
    )
    return case_id


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
