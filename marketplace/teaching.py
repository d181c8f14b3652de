"""Which settled cases taught the model that serves now (the clinic's ``cases.taught``).

The clinic sends ``cases.taught`` when a round of encrypted fine-tuning on settled cases is
promoted (``predictor.teach``). The model serving now is the one that predicted the most
recently predicted case; a case that taught one of its ancestors taught it too.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from marketplace.domain.status import CaseStatus
from marketplace.messages import CasesTaught
from marketplace.storage.models import Case, ModelParent, Vote

#: Fine-tuning generations followed back from the serving model (a cycle cannot loop).
MAX_GENERATIONS = 1000


def record_taught(session: Session, message: CasesTaught, *, now: datetime) -> int:
    """Mark the message's settled cases as teachers of its model; returns how many were new."""
    if session.get(ModelParent, message.model_sha256) is None:
        session.add(
            ModelParent(
                model_sha256=message.model_sha256,
                parent_sha256=message.parent_sha256,
                taught_at=message.taught_at,
            )
        )
    marked = session.execute(
        update(Case)
        .where(
            Case.id.in_(message.case_ids),
            Case.status == CaseStatus.SETTLED,
            Case.taught_model_sha256.is_(None),
        )
        .values(taught_model_sha256=message.model_sha256)
    )
    return int(marked.rowcount)  # type: ignore[attr-defined]


def serving_model(session: Session) -> str | None:
    """The sha256 of the model that made the latest prediction the market has seen."""
    return session.scalar(
        select(Case.model_sha256)
        .where(Case.model_sha256.is_not(None), Case.predicted_at.is_not(None))
        .order_by(Case.predicted_at.desc())
        .limit(1)
    )


def lineage(session: Session, model_sha256: str) -> set[str]:
    """The model and every model it was fine-tuned from."""
    found = {model_sha256}
    current = model_sha256
    for _ in range(MAX_GENERATIONS):
        parent = session.scalar(
            select(ModelParent.parent_sha256).where(ModelParent.model_sha256 == current)
        )
        if parent is None or parent in found:
            break
        found.add(parent)
        current = parent
    return found


def cases_that_taught(session: Session, doctor_id: str) -> int:
    """How many of the doctor's settled cases taught the model serving now."""
    serving = serving_model(session)
    if serving is None:
        return 0
    return int(
        session.scalar(
            select(func.count(func.distinct(Case.id)))
            .join(Vote, (Vote.case_id == Case.id) & (Vote.doctor_id == doctor_id))
            .where(
                Case.status == CaseStatus.SETTLED,
                Case.taught_model_sha256.in_(lineage(session, serving)),
            )
        )
        or 0
    )
