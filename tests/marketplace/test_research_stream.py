"""``GET /decisions.csv``: the operator's alone, and only rows the k-anonymous release put out.

A row streamed the moment its case settled could be linked back to the case a doctor saw in
the pool (its bounty gives away the confidence band); the Ocean release holds rows back until
their group has k. So the live stream gives out exactly what that release has released.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests

from infra.messaging import generate_key, public_key
from marketplace import research
from marketplace.service import MarketplaceSettings, create_app
from tests.marketplace.flows import make_doctors, open_case
from tests.marketplace.helpers import T0
from tests.marketplace.servers import serve
from tests.marketplace.test_review import _panel

TOKEN = "operator-token-0123456789"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
HEADER = "day,backbone,model_label,confidence_bucket,diagnosis,reviewers,agreement,unfamiliar,model_version"


def _settings(db_url: str, operator_token: str) -> MarketplaceSettings:
    return MarketplaceSettings(
        db_url=db_url,
        signing_key=generate_key(),
        clinic_public_key=public_key(generate_key()),
        patient_base_url="http://127.0.0.1:9",
        csv_poll_interval_s=0.05,
        operator_token=operator_token,
    )


def _csv(url: str, headers: dict[str, str], follow: str = "0") -> requests.Response:
    return requests.get(f"{url}/decisions.csv?follow={follow}", headers=headers, timeout=10)


def test_the_research_stream_is_for_the_operator_only(db_url) -> None:
    wrong = [{}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {TOKEN}x"}]
    with serve(create_app(_settings(db_url, ""))) as url:  # no operator token configured
        for headers in [*wrong, OPERATOR]:
            r = _csv(url, headers)
            assert (r.status_code, r.json()["error"]) == (403, "forbidden"), headers
    with serve(create_app(_settings(db_url, TOKEN))) as url:
        for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}):
            for follow in ("0", "1"):  # the live stream too: an error, never an open stream
                r = _csv(url, headers, follow)
                assert (r.status_code, r.json()["error"]) == (401, "unauthorized"), headers
        r = _csv(url, {"Authorization": f"Bearer {TOKEN}x"})
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
        r = _csv(url, OPERATOR)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
        assert r.text == HEADER + "\n"


def _settle(session, confidence: float, label: str) -> tuple[int, list[str]]:
    """Settle a case (three agreeing votes); returns its research row's id and CSV values."""
    last = max((row_id for row_id, _ in research.rows_after(session, 0)), default=0)
    case_id = open_case(session, confidence=confidence, label=label)
    _panel(session, case_id, make_doctors(session, 3), ["no_tumor"] * 3)
    ((row_id, values),) = research.rows_after(session, last)
    return row_id, values


@pytest.fixture
def operator_url(db_url) -> Iterator[str]:
    with serve(create_app(_settings(db_url, TOKEN))) as url:
        yield url


def test_only_released_rows_are_streamed_in_release_order(operator_url, session) -> None:
    first_id, first = _settle(session, 0.93, "tumor")
    second_id, second = _settle(session, 0.88, "no_tumor")
    _, held = _settle(session, 0.86, "tumor")  # its group never reaches k here
    released_at = T0 + timedelta(hours=2)
    with requests.get(
        f"{operator_url}/decisions.csv", headers=OPERATOR, stream=True, timeout=(5, 20)
    ) as stream:
        assert stream.status_code == 200 and stream.headers["Cache-Control"] == "no-store"
        chunks = stream.iter_content(chunk_size=None, decode_unicode=True)
        buffer = next(chunks)
        assert buffer == HEADER + "\n"  # three settled cases, none released: nothing
        assert _csv(operator_url, OPERATOR).text == HEADER + "\n"

        # The publisher releases the second row's group, then the first's at the same clock
        # reading: the stream follows releases, not settlement (row ids) or clock ties.
        research.mark_published(session, [second_id], ref="0xb", now=released_at)
        while buffer.count("\n") < 2:
            buffer += next(chunks)
        research.mark_published(session, [first_id], ref="0xa", now=released_at)
        while buffer.count("\n") < 3:
            buffer += next(chunks)
    lines = [line.split(",") for line in buffer.splitlines()[1:]]
    assert lines == [second, first]
    snapshot = _csv(operator_url, OPERATOR).text.splitlines()
    assert snapshot == [HEADER, ",".join(second), ",".join(first)]
    assert ",".join(held) not in snapshot


def test_each_release_is_stamped_after_the_last(session) -> None:
    """Releases at the same (or an earlier) clock reading still come later in release order,
    so a reader's cursor never skips one."""
    ids, rows = zip(*(_settle(session, c, "tumor") for c in (0.95, 0.85, 0.87)), strict=True)
    at = T0 + timedelta(hours=1)
    research.mark_published(session, [ids[2]], ref="0x1", now=at)
    (after_first,) = research.released_after(session, None)
    research.mark_published(session, [ids[1]], ref="0x2", now=at)
    research.mark_published(session, [ids[0]], ref="0x3", now=at - timedelta(minutes=5))
    later = research.released_after(session, after_first[0])
    assert [values for _, values in later] == [rows[1], rows[0]]
    stamps = [cursor.published_at for cursor, _ in [after_first, *later]]
    assert stamps == sorted(set(stamps)) and stamps[0] == at
    assert research.released_after(session, later[-1][0]) == []
