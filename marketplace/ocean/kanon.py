"""k-anonymity release rule for research rows (pure domain logic, no I/O).

A row is published only inside a group of at least k rows that share its quasi-identifiers
(the fields an outsider could know about a patient: by default the day of the case, the model
backbone and the number of reviewing doctors).

The rule is applied to every *release*, not only to the whole file: a group's pending rows go
out together once there are k of them. Researchers can buy the file twice and diff the versions;
because each difference is itself k-anonymous, the newest rows can never be narrowed down to
fewer than k either (a single late row joining an old group would be exposed by such a diff).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R", bound=Mapping[str, object])
GroupKey = tuple[str, ...]


def group_key(row: Mapping[str, object], quasi_identifiers: Sequence[str]) -> GroupKey:
    """The quasi-identifier values of a row, as strings (the form they take in the CSV)."""
    return tuple(str(row[q]) for q in quasi_identifiers)


def group_counts(
    rows: Iterable[Mapping[str, object]], quasi_identifiers: Sequence[str]
) -> Counter[GroupKey]:
    return Counter(group_key(r, quasi_identifiers) for r in rows)


@dataclass(frozen=True)
class Split(Generic[R]):
    """Rows that may be published now, and rows held back until their group has k rows."""

    release: list[R]
    hold: list[R]


def split_releasable(pending: Sequence[R], k: int, quasi_identifiers: Sequence[str]) -> Split[R]:
    """Release the pending rows of every group that has >= k pending rows; hold the rest."""
    if k < 1:
        raise ValueError("k must be >= 1")
    pending_counts = group_counts(pending, quasi_identifiers)
    release: list[R] = []
    hold: list[R] = []
    for row in pending:
        if pending_counts[group_key(row, quasi_identifiers)] >= k:
            release.append(row)
        else:
            hold.append(row)
    return Split(release, hold)


def is_k_anonymous(
    rows: Iterable[Mapping[str, object]], k: int, quasi_identifiers: Sequence[str]
) -> bool:
    """True when every quasi-identifier group of `rows` has at least k members."""
    return all(n >= k for n in group_counts(rows, quasi_identifiers).values())
