"""The doctor's live view and track record over HTTP: ``GET /api/events`` and
``GET /api/me/track-record`` against a real marketplace app and store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.messaging import generate_key
from marketplace import doctors, review
from marketplace.domain.consensus import PanelRule
from marketplace.domain.policy import MarketPolicy
from marketplace.domain.pricing import price_bounty, uncertainty
from marketplace.domain.reputation import ReputationRule
from marketplace.domain.track import SettledVote, track
from marketplace.service import MarketplaceSettings, create_app
from tests.marketplace.events import EventLog, first_batch
from tests.marketplace.flows import open_case
from tests.marketplace.helpers import T0
from tests.marketplace.servers import Api, serve

#: One-seat panels: each vote settles its case.
SOLO = MarketPolicy(panel=PanelRule(panel_size=1, quorum=1, widen_step=1, max_panel=1))


@pytest.fixture
def api(db_url) -> Iterator[Api]:
    settings = MarketplaceSettings(
        db_url=db_url, signing_key=generate_key(), policy=SOLO, events_poll_s=0.2
    )
    with serve(create_app(settings)) as url:
        yield Api(url)


def test_the_stream_needs_the_bearer_header_and_answers_json_errors(api) -> None:
    for token in (None, "not-a-token-of-anyone-123456"):
        reply = api("GET", "/api/events", token)
        assert reply.status_code == 401
        assert reply.json()["error"] == "unauthorized"
    # A token in the URL is no way in either.
    assert api("GET", "/api/events?token=whatever").status_code == 401


def test_the_stream_sends_the_view_then_what_changes(api, session) -> None:
    doctor_id, token = doctors.create_doctor(
        session, display_name="Dr Live", specialty="neuroradiology", reputation=150, now=T0
    )
    first = first_batch(api.url, token)
    assert first == {
        "me": api("GET", "/api/me", token).json(),
        "pool": {"cases": []},
        "claims": {"cases": []},
        "history": {"settled": []},
    }
    log = EventLog(api.url, token)
    try:
        log.wait_for(lambda log: ("ready", {}) in log.events)
        # A case opened by the clinic appears without asking (the stream polls the store).
        case_id = open_case(session, confidence=0.7, policy=SOLO)
        log.wait_for(lambda log: [c["case_id"] for c in log.latest("pool")["cases"]] == [case_id])
        # Claimed: it leaves the pool, joins the claims; the model's label stays hidden.
        assert api("POST", f"/api/cases/{case_id}/claim", token).status_code == 201
        log.wait_for(lambda log: log.latest("pool") == {"cases": []})
        log.wait_for(lambda log: len(log.latest("claims")["cases"]) == 1)
        assert log.latest("claims")["cases"][0]["model_label"] is None
        # Decided (a one-seat panel settles): history, reputation and balance follow.
        vote = {"case_id": case_id, "label": "tumor"}
        assert api("POST", "/decision", token, json=vote).status_code == 201
        log.wait_for(lambda log: len(log.latest("history")["settled"]) == 1)
        settled = log.latest("history")["settled"][0]
        assert settled["model_label"] == "tumor" and settled["agreed"] is True
        log.wait_for(lambda log: log.latest("me")["balance"] == price_bounty(0.7))
        assert log.latest("claims") == {"cases": []}
        # Each state went out once: nothing is repeated while nothing changes.
        names = [name for name, _ in log.events if name != ":"]
        assert names.count("history") == 2 and names.count("ready") == 1
    finally:
        log.close()


def test_a_stopping_server_ends_open_streams_properly(db_url, session) -> None:
    """Open streams end at shutdown (their last chunk sent) instead of holding it up."""
    _, token = doctors.create_doctor(
        session, display_name="Dr Bye", specialty="neuroradiology", now=T0
    )
    settings = MarketplaceSettings(db_url=db_url, signing_key=generate_key(), policy=SOLO)
    with serve(create_app(settings)) as url:
        log = EventLog(url, token)
        log.wait_for(lambda log: ("ready", {}) in log.events)
    assert log.join() and log.ended_cleanly


def test_the_track_record_follows_reputation_and_earnings_case_by_case(api, session) -> None:
    doctor_id, token = doctors.create_doctor(
        session, display_name="Dr Track", specialty="neuroradiology", reputation=150, now=T0
    )
    expected = []
    reputation, earned = 150, 0
    rule = SOLO.reputation.rule
    # The model says tumor; the doctor agrees, dissents with the model... each one-seat panel
    # settles on the doctor's own vote, so every vote agrees with its diagnosis.
    for i, (confidence, label) in enumerate([(0.7, "tumor"), (0.95, "no_tumor"), (0.6, "tumor")]):
        case_id = open_case(session, confidence=confidence, policy=SOLO, now=T0 + timedelta(i))
        review.claim_case(session, doctor_id, case_id, now=T0 + timedelta(i), policy=SOLO)
        review.cast_vote(
            session, doctor_id, case_id, label=label, note=None, now=T0 + timedelta(i), policy=SOLO
        )
        reputation = rule.apply(reputation, True, uncertainty(confidence))
        earned += price_bounty(confidence)
        expected.append((case_id, reputation, earned))
    record = api("GET", "/api/me/track-record", token).json()
    assert record["start_reputation"] == 150 and record["earned_before"] == 0
    assert record["settled"] == 3 and record["agreed"] == 3
    assert [(p["case_id"], p["reputation"], p["earned"]) for p in record["points"]] == expected
    me = api("GET", "/api/me", token).json()
    assert (me["reputation"], me["balance"]) == expected[-1][1:]
    assert api("GET", "/api/me/track-record").status_code == 401


votes = st.lists(
    st.tuples(st.booleans(), st.floats(0.0, 1.0), st.integers(0, 5000)), min_size=0, max_size=30
)


@given(start=st.integers(100, 400), steps=votes, earned_before=st.integers(0, 10_000))
def test_walking_back_from_today_finds_every_earlier_reputation(start, steps, earned_before):
    rule = ReputationRule()
    reputation, forward = start, []
    for agreed, difficulty, _ in steps:
        reputation = rule.apply(reputation, agreed, difficulty)
        forward.append(reputation)
    settled = [
        SettledVote(f"{i:032x}", T0 + timedelta(i), agreed, difficulty, paid)
        for i, (agreed, difficulty, paid) in enumerate(steps)
    ]
    first, points = track(settled, reputation, earned_before, rule)
    if 0 not in forward:  # the floor at zero loses what was below it
        assert first == start
        assert [p.reputation for p in points] == forward
    assert [p.earned for p in points] == [
        earned_before + sum(paid for _, _, paid in steps[: i + 1]) for i in range(len(steps))
    ]
