"""The published CSV: column order, row validation and digest (pure, no I/O).

Rows carry no patient data: the marketplace already reduced each settled case to public
research fields. The internal `row_id` is never written to the CSV (it would be a linkage key
back to the marketplace database).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime

from marketplace.domain.anonymize import CSV_COLUMNS, csv_text

#: The published columns are exactly the marketplace's anonymized research row.
COLUMNS: tuple[str, ...] = CSV_COLUMNS


class InvalidRow(ValueError):
    """A row from the marketplace lacks a public column or has a bad row id."""


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value)
    if "\n" in text or "\r" in text:
        raise InvalidRow("newlines are not allowed in research fields")
    return text


def public_row(row: Mapping[str, object]) -> dict[str, str]:
    """The CSV fields of a marketplace row, as strings, in column order."""
    missing = [c for c in COLUMNS if c not in row or row[c] is None]
    if missing:
        raise InvalidRow(f"row {row.get('row_id')!r} lacks {', '.join(missing)}")
    return {c: _text(row[c]) for c in COLUMNS}


def row_id(row: Mapping[str, object]) -> int:
    value = row.get("row_id")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRow(f"bad row_id {value!r}")
    return value


def render_csv(rows: Iterable[Sequence[str]]) -> bytes:
    """The exact bytes that get hashed: the marketplace's one CSV dialect, with header, UTF-8."""
    return csv_text(rows, header=True).encode("utf-8")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
