"""Research rows: the anonymized stream of settled cases (CSV and Ocean publisher source).

Both consumers render the rows with ``domain.anonymize.csv_text``, the one CSV dialect.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from marketplace.domain.anonymize import CSV_COLUMNS, ResearchRecord
from marketplace.storage.models import ResearchRow
from marketplace.storage.unit import read_only, unit_of_work


def _record(row: ResearchRow) -> ResearchRecord:
    return ResearchRecord(
        day=row.day,
        backbone=row.backbone,
        model_label=row.model_label,
        confidence_bucket=row.confidence_bucket,
        diagnosis=row.diagnosis,
        reviewers=row.reviewers,
        agreement=row.agreement,
    )


def _public(row: ResearchRow) -> dict[str, object]:
    """Public fields as the exact CSV strings, so every consumer renders identical bytes."""
    return {"row_id": row.id} | dict(zip(CSV_COLUMNS, _record(row).as_csv_values(), strict=True))


@read_only
def unpublished_rows(session: Session, limit: int) -> list[dict[str, object]]:
    """Oldest rows not yet published: ``row_id`` plus the public fields (strings)."""
    rows = session.scalars(
        select(ResearchRow)
        .where(ResearchRow.published_at.is_(None))
        .order_by(ResearchRow.id)
        .limit(max(0, limit))
    )
    return [_public(row) for row in rows]


@unit_of_work
def mark_published(session: Session, row_ids: list[int], *, ref: str, now: datetime) -> None:
    """Record that these rows went out under ``ref`` (rows already published keep their ref)."""
    if not row_ids:
        return
    session.execute(
        update(ResearchRow)
        .where(ResearchRow.id.in_(list(row_ids)), ResearchRow.published_at.is_(None))
        .values(published_at=now, published_ref=ref[:200])
        .execution_options(synchronize_session=False)
    )


@read_only
def rows_after(session: Session, after_id: int, limit: int = 500) -> list[tuple[int, list[str]]]:
    """Rows with id greater than ``after_id`` as (id, CSV values), for the live CSV stream."""
    rows = session.scalars(
        select(ResearchRow).where(ResearchRow.id > after_id).order_by(ResearchRow.id).limit(limit)
    )
    return [(row.id, _record(row).as_csv_values()) for row in rows]
