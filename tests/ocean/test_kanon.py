"""k-anonymity release rule: pure, property-tested."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.ocean.kanon import group_counts, is_k_anonymous, split_releasable
from marketplace.ocean.settings import DEFAULT_QUASI_IDENTIFIERS

QIS = ("day", "backbone", "reviewers")


def row(i: int, day: str = "d1", backbone: str = "lenet", reviewers: int = 3) -> dict:
    return {"row_id": i, "day": day, "backbone": backbone, "reviewers": reviewers, "diagnosis": "x"}


def test_small_group_is_held_until_k_similar_rows_exist() -> None:
    first = split_releasable([row(1), row(2)], 3, QIS)
    assert first.release == [] and [r["row_id"] for r in first.hold] == [1, 2]

    second = split_releasable([row(1), row(2), row(3)], 3, QIS)
    assert [r["row_id"] for r in second.release] == [1, 2, 3] and second.hold == []


def test_a_late_row_waits_even_if_its_group_was_published_before() -> None:
    """Diffing two versions of the file must not single out one new row."""
    out = split_releasable([row(9), row(10, day="d2"), row(11, day="d2")], 2, QIS)
    assert [r["row_id"] for r in out.release] == [10, 11]
    assert [r["row_id"] for r in out.hold] == [9]


def test_groups_differ_by_any_quasi_identifier() -> None:
    rows = [row(1), row(2, backbone="resnet18"), row(3, reviewers=5)]
    assert split_releasable(rows, 2, QIS).release == []
    assert split_releasable(rows, 1, QIS).hold == []


def test_the_unfamiliar_flag_is_a_quasi_identifier_by_default() -> None:
    """One flagged scan among familiar ones of the same day must not go out alone."""
    same = {"model_version": "lenet v1"}
    rows = [row(i) | same | {"unfamiliar": "no"} for i in range(4)]
    rows.append(row(9) | same | {"unfamiliar": "yes"})
    out = split_releasable(rows, 3, DEFAULT_QUASI_IDENTIFIERS)
    assert [r["row_id"] for r in out.release] == [0, 1, 2, 3]
    assert [r["row_id"] for r in out.hold] == [9]
    assert "unfamiliar" in DEFAULT_QUASI_IDENTIFIERS


def test_the_model_version_is_a_quasi_identifier_by_default() -> None:
    """A version served for an hour narrows its cases to that hour: it groups like the day."""
    rows = [row(i) | {"unfamiliar": "no", "model_version": "lenet v1"} for i in range(4)]
    rows.append(row(9) | {"unfamiliar": "no", "model_version": "lenet v2"})
    out = split_releasable(rows, 3, DEFAULT_QUASI_IDENTIFIERS)
    assert [r["row_id"] for r in out.release] == [0, 1, 2, 3]
    assert [r["row_id"] for r in out.hold] == [9]
    assert "model_version" in DEFAULT_QUASI_IDENTIFIERS


rows_strategy = st.lists(
    st.builds(
        row,
        st.integers(0, 10**6),
        st.sampled_from(["d1", "d2", "d3"]),
        st.sampled_from(["lenet", "resnet18"]),
        st.integers(1, 3),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(rows_strategy, max_size=6), k=st.integers(1, 6))
def test_every_release_and_the_whole_file_stay_k_anonymous_and_no_row_is_lost(batches, k) -> None:
    published: list[dict] = []
    waiting: list[dict] = []
    for batch in batches:
        waiting = waiting + batch
        out = split_releasable(waiting, k, QIS)
        assert Counter(map(id, out.release + out.hold)) == Counter(map(id, waiting))
        assert is_k_anonymous(out.release, k, QIS)  # the diff between two versions
        published += out.release
        waiting = out.hold
        assert is_k_anonymous(published, k, QIS)  # the file itself
    # held rows are exactly those whose group has fewer than k waiting rows
    assert all(n < k for n in group_counts(waiting, QIS).values())
