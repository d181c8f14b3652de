"""Outbox and inbox on SQLite and PostgreSQL: messages commit with their state change, and a
message id is accepted once, even by concurrent duplicate deliveries."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from infra.mailbox import (
    MAX_ERROR_CHARS,
    PendingMessage,
    accept,
    mark_delivered,
    note_failure,
    post,
    undelivered,
)
from infra.messaging import MAX_BODY_BYTES, Envelope, new_message_id
from tests.infra.stores import Effect, Inbox, Outbox

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def envelope(message_id: str | None = None) -> Envelope:
    return Envelope(
        message_id=message_id or new_message_id(),
        type="case.settled",
        sender="marketplace",
        audience="clinic",
        sent_at=T0.timestamp(),
        body={"case_id": "c-1", "diagnosis": "benign"},
    )


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def post_committed(sessions: sessionmaker[Session], destination: str, n: int) -> list[str]:
    ids = []
    with sessions() as session:
        for i in range(n):
            ids.append(
                post(
                    session,
                    Outbox,
                    destination=destination,
                    type="case.needs_review",
                    body={"seq": i, "case_id": f"c-{i}"},
                    now=T0 + timedelta(seconds=i),
                )
            )
        session.commit()
    return ids


# --- outbox -------------------------------------------------------------------------------


def test_posted_messages_wait_in_order_per_destination(sessions):
    to_market = post_committed(sessions, "marketplace", 3)
    to_party1 = post_committed(sessions, "party1", 1)
    with sessions() as session:
        pending = undelivered(session, Outbox, "marketplace", limit=10)
        assert [m.message_id for m in pending] == to_market
        assert pending[0] == PendingMessage(
            message_id=to_market[0],
            destination="marketplace",
            type="case.needs_review",
            body={"seq": 0, "case_id": "c-0"},
            created_at=T0,
            attempts=0,
        )
        assert [m.message_id for m in undelivered(session, Outbox, "marketplace", 2)] == (
            to_market[:2]
        )
        assert [m.message_id for m in undelivered(session, Outbox, "party1", 10)] == to_party1


def test_a_message_is_part_of_the_callers_unit_of_work(sessions):
    with sessions() as session:
        session.add(Effect(message_id="-", value="case created"))
        post(session, Outbox, destination="marketplace", type="t", body={}, now=T0)
        session.rollback()
    assert count(sessions, Outbox) == count(sessions, Effect) == 0

    with sessions() as session:
        session.add(Effect(message_id="-", value="case created"))
        message_id = post(session, Outbox, destination="marketplace", type="t", body={}, now=T0)
        session.commit()
    assert count(sessions, Outbox) == count(sessions, Effect) == 1
    with sessions() as session:
        assert undelivered(session, Outbox, "marketplace", 1)[0].message_id == message_id


def test_a_caller_may_choose_the_message_id_and_it_is_unique(sessions):
    message_id = new_message_id()
    with sessions() as session:
        post(session, Outbox, destination="m", type="t", body={}, now=T0, message_id=message_id)
        session.commit()
    with sessions() as session, pytest.raises(Exception, match="(?i)unique|duplicate"):
        post(session, Outbox, destination="m", type="t", body={}, now=T0, message_id=message_id)
        session.commit()


def test_a_delivered_message_is_no_longer_pending(sessions):
    first, second = post_committed(sessions, "marketplace", 2)
    with sessions() as session:
        mark_delivered(session, Outbox, first, T0 + timedelta(minutes=1))
        mark_delivered(session, Outbox, first, T0 + timedelta(minutes=9))  # no-op
        session.commit()
    with sessions() as session:
        assert [m.message_id for m in undelivered(session, Outbox, "marketplace", 10)] == [second]
        row = session.scalars(select(Outbox).where(Outbox.message_id == first)).one()
        assert row.delivered_at == T0 + timedelta(minutes=1)


def test_failures_are_counted_and_the_error_truncated(sessions):
    (message_id,) = post_committed(sessions, "marketplace", 1)
    with sessions() as session:
        note_failure(session, Outbox, message_id, "HTTP 503")
        note_failure(session, Outbox, message_id, "x" * 10_000)
        session.commit()
    with sessions() as session:
        (pending,) = undelivered(session, Outbox, "marketplace", 10)
        assert pending.attempts == 2
        row = session.scalars(select(Outbox).where(Outbox.message_id == message_id)).one()
        assert row.last_error == "x" * MAX_ERROR_CHARS


@pytest.mark.parametrize(
    "bad",
    [
        {"body": {"blob": "x" * (MAX_BODY_BYTES + 1)}},
        {"body": {"when": T0}},
        {"type": "has space"},
        {"destination": ""},
    ],
)
def test_a_message_no_receiver_would_accept_is_never_queued(sessions, bad):
    message = {"destination": "marketplace", "type": "t", "body": {}} | bad
    with sessions() as session:
        with pytest.raises(ValueError):
            post(session, Outbox, now=T0, **message)
        session.commit()
    assert count(sessions, Outbox) == 0


def test_times_come_back_as_the_same_utc_instant(sessions):
    from zoneinfo import ZoneInfo

    local = datetime(2024, 5, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))
    with sessions() as session:
        post(session, Outbox, destination="m", type="t", body={}, now=local)
        session.commit()
    with sessions() as session:
        (pending,) = undelivered(session, Outbox, "m", 1)
    assert pending.created_at == T0 and pending.created_at.tzinfo == UTC
    with sessions() as session, pytest.raises(Exception, match="naive"):
        post(session, Outbox, destination="m", type="t", body={}, now=datetime(2024, 5, 1))
        session.commit()


# --- inbox --------------------------------------------------------------------------------


def test_a_message_id_is_accepted_once(sessions):
    message = envelope()
    with sessions() as session:
        assert accept(session, Inbox, message, T0) is True
        session.commit()
    with sessions() as session:
        assert accept(session, Inbox, message, T0 + timedelta(minutes=5)) is False
        session.commit()
    with sessions() as session:
        (row,) = session.scalars(select(Inbox)).all()
        assert (row.message_id, row.sender, row.type, row.received_at) == (
            message.message_id,
            "marketplace",
            "case.settled",
            T0,
        )


def test_a_duplicate_leaves_the_transaction_usable(sessions):
    message = envelope()
    with sessions() as session:
        assert accept(session, Inbox, message, T0)
        assert not accept(session, Inbox, message, T0)
        session.add(Effect(message_id=message.message_id, value="applied"))
        session.commit()
    assert count(sessions, Inbox) == count(sessions, Effect) == 1


def test_an_acceptance_rolled_back_lets_the_message_be_accepted_again(sessions):
    message = envelope()
    with sessions() as session:
        assert accept(session, Inbox, message, T0)
        session.rollback()  # the handler failed: nothing happened, not even the inbox row
    with sessions() as session:
        assert accept(session, Inbox, message, T0)
        session.commit()
    assert count(sessions, Inbox) == 1


def apply_once(
    sessions: sessionmaker[Session], message: Envelope, start: threading.Barrier
) -> bool:
    """The inbox's unit of work: accept first, apply if new, commit."""
    with sessions() as session:
        start.wait(timeout=30)
        accepted = accept(session, Inbox, message, T0)
        if accepted:
            session.add(Effect(message_id=message.message_id, value="applied"))
        session.commit()
        return accepted


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_duplicate_deliveries_take_effect_once(sessions, round_):
    message, workers = envelope(), 6
    start = threading.Barrier(workers)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda _: apply_once(sessions, message, start), range(workers)))
    assert sorted(results) == [False] * (workers - 1) + [True]
    assert count(sessions, Inbox) == count(sessions, Effect) == 1


def wait_until_blocked_on_a_lock(sessions: sessionmaker[Session], deadline_s: float) -> None:
    """PostgreSQL: poll until some other backend waits on a lock (our duplicate accept)."""
    deadline = time.monotonic() + deadline_s
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    while time.monotonic() < deadline:
        with sessions() as probe:
            if probe.scalar(query):
                return
        time.sleep(0.01)
    raise AssertionError("the duplicate accept never waited for the first transaction")


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
def test_a_duplicate_waits_for_the_first_delivery_to_finish(sessions, db_url, first_commits):
    """While the first delivery is uncommitted, a duplicate neither wins nor fails: it waits,
    then is a duplicate (first committed) or applies the message itself (first rolled back)."""
    message = envelope()
    with sessions() as first, ThreadPoolExecutor(1) as pool:
        assert accept(first, Inbox, message, T0)
        second = pool.submit(apply_once, sessions, message, threading.Barrier(1))
        if db_url.startswith("postgresql"):
            wait_until_blocked_on_a_lock(sessions, deadline_s=30)
        if first_commits:
            first.add(Effect(message_id=message.message_id, value="applied"))
            first.commit()
        else:
            first.rollback()
        assert second.result(timeout=60) is not first_commits
    assert count(sessions, Inbox) == count(sessions, Effect) == 1
