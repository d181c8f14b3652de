"""Research rows: one anonymized row per settled case, released in k-anonymous groups.

The Ocean publisher reads the unreleased rows, releases those whose group has reached k and
marks them published; only released rows ever leave the marketplace, on Ocean or in the
operator's ``GET /decisions.csv``. Both render with ``domain.anonymize.csv_text``, the one CSV
dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from marketplace.domain.anonymize import CSV_COLUMNS, UNKNOWN_VERSION, ResearchRecord
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
        unfamiliar=bool(row.unfamiliar),
        model_version=row.passport_version or UNKNOWN_VERSION,
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
    """Record that these rows went out under ``ref`` (rows already published keep their ref).

    Each release is stamped later than every earlier one (``now``, or a microsecond after the
    latest stamp if the clock has not moved on), so the live CSV can follow releases in order.
    """
    if not row_ids:
        return
    latest = session.scalar(select(func.max(ResearchRow.published_at)))
    stamp = now if latest is None or now > latest else latest + timedelta(microseconds=1)
    session.execute(
        update(ResearchRow)
        .where(ResearchRow.id.in_(list(row_ids)), ResearchRow.published_at.is_(None))
        .values(published_at=stamp, published_ref=ref[:200])
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class ReleaseCursor:
    """Where a reader of released rows stands: the last row it got, in release order."""

    published_at: datetime
    row_id: int


@read_only
def released_after(
    session: Session, cursor: ReleaseCursor | None, limit: int = 500
) -> list[tuple[ReleaseCursor, list[str]]]:
    """Released rows after ``cursor`` in release order, each with its cursor and CSV values.

    Only rows the k-anonymous release has put out (``published_at`` set): a row whose group is
    still below k never appears here.
    """
    query = select(ResearchRow).where(ResearchRow.published_at.is_not(None))
    if cursor is not None:
        query = query.where(
            or_(
                ResearchRow.published_at > cursor.published_at,
                and_(
                    ResearchRow.published_at == cursor.published_at,
                    ResearchRow.id > cursor.row_id,
                ),
            )
        )
    rows = session.scalars(
        query.order_by(ResearchRow.published_at, ResearchRow.id).limit(max(0, limit))
    )
    return [
        (ReleaseCursor(row.published_at, row.id), _record(row).as_csv_values())
        for row in rows
        if row.published_at is not None
    ]


@read_only
def rows_after(session: Session, after_id: int, limit: int = 500) -> list[tuple[int, list[str]]]:
    """Every row, released or not, with id greater than ``after_id`` as (id, CSV values).

    For the marketplace's own checks and tests; never served: outsiders get released rows only
    (:func:`released_after`)."""
    rows = session.scalars(
        select(ResearchRow).where(ResearchRow.id > after_id).order_by(ResearchRow.id).limit(limit)
    )
    return [(row.id, _record(row).as_csv_values()) for row in rows]
