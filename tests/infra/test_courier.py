"""Courier and inbox end to end over real HTTP: two organisations, two stores, one message
path; each message takes effect exactly once through outages, lost acks and replays."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.courier import Courier, add_inbox_route, courier_ctx
from infra.mailbox import post
from infra.messaging import (
    MAX_MESSAGE_BYTES,
    Envelope,
    canonical_json,
    generate_key,
    new_message_id,
    public_key,
    seal,
)
from infra.net import free_port
from tests.infra.stores import Effect, Inbox, Outbox, make_test_engine
from tests.marketplace.servers import serve

CLINIC_KEY = generate_key()
MARKET_KEY = generate_key()
REVIEW = "case.needs_review"


# --- harness ------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Clock:
    """The receiver's clock: real time plus an offset the test moves forward."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Store:
    """One organisation's database."""

    sessions: sessionmaker[Session]

    def count(self, model: type) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(model)) or 0

    def effects(self) -> list[str]:
        with self.sessions() as session:
            return list(session.scalars(select(Effect.value).order_by(Effect.id)))

    def outbox(self) -> list[Outbox]:
        with self.sessions() as session:
            return list(session.scalars(select(Outbox).order_by(Outbox.id)))

    def post(self, destination: str, values: list[str], *, now: datetime | None = None) -> None:
        with self.sessions() as session:
            for value in values:
                post(
                    session,
                    Outbox,
                    destination=destination,
                    type=REVIEW,
                    body={"value": value},
                    now=now or datetime.now(UTC),
                )
            session.commit()


@dataclass
class Receiver:
    """The marketplace's inbox app, with hooks that play the network's tricks."""

    store: Store
    executor: ThreadPoolExecutor
    clock: Clock = field(default_factory=Clock)
    captured: list[bytes] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    fail_values: set[str] = field(default_factory=set)  # the handler raises once for these
    drop_acks: int = 0  # answers to lose after the message was applied
    misbehave: str = ""  # "commit" or "rollback": a handler that ends the transaction itself

    def record(self, session: Session, envelope: Envelope) -> None:
        value = envelope.body["value"]
        if value in self.fail_values:
            self.fail_values.discard(value)
            raise RuntimeError("the handler failed")
        session.add(Effect(message_id=envelope.message_id, value=value))
        if self.misbehave == "commit":
            session.commit()
        elif self.misbehave == "rollback":
            session.rollback()
            session.add(Effect(message_id=envelope.message_id, value=value))

    def app(self) -> web.Application:
        @web.middleware
        async def network(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.captured.append(await request.read())
            response = await handler(request)
            self.statuses.append(response.status)
            if self.drop_acks and response.status == 200:
                self.drop_acks -= 1
                assert request.transport is not None
                request.transport.close()  # applied and committed; the answer never arrives
            return response

        app = web.Application(middlewares=[network])
        add_inbox_route(
            app,
            me="marketplace",
            peers={"clinic": public_key(CLINIC_KEY)},
            sessions=self.store.sessions,
            inbox_cls=Inbox,
            executor=self.executor,
            handlers={REVIEW: self.record},
            clock=self.clock,
        )
        return app


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4, thread_name_prefix="db") as pool:
        yield pool


def make_store(tmp_path, name: str) -> Iterator[Store]:
    engine = make_test_engine(f"sqlite:///{tmp_path / name}.sqlite3")
    yield Store(sessionmaker(bind=engine, expire_on_commit=False))
    engine.dispose()


@pytest.fixture
def clinic(tmp_path) -> Iterator[Store]:
    yield from make_store(tmp_path, "clinic")


@pytest.fixture
def market(tmp_path) -> Iterator[Store]:
    yield from make_store(tmp_path, "marketplace")


@pytest.fixture
def receiver(market, executor) -> Receiver:
    return Receiver(market, executor)


def courier(clinic: Store, executor: ThreadPoolExecutor, **destinations: str) -> Courier:
    return Courier(
        "clinic",
        CLINIC_KEY,
        destinations,
        clinic.sessions,
        Outbox,
        executor,
        poll_s=0.05,
        max_backoff_s=0.2,
        timeout_s=5.0,
        batch=2,
    )


@contextmanager
def running(the_courier: Courier) -> Iterator[Courier]:
    """The clinic's process: an app whose cleanup_ctx runs the courier."""
    app = web.Application()
    app.cleanup_ctx.append(courier_ctx(the_courier))
    with serve(app):
        yield the_courier


def send(url: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    """POST a raw message as a third party would, outside any courier."""
    request = urllib.request.Request(
        f"{url}/messages", data=raw, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def sealed(
    key: str = CLINIC_KEY,
    *,
    sender: str = "clinic",
    audience: str = "marketplace",
    type: str = REVIEW,
    sent_at: float | None = None,
    value: str = "direct",
) -> bytes:
    envelope = Envelope(
        new_message_id(), type, sender, audience, sent_at or time.time(), {"value": value}
    )
    return seal(envelope, key)


def all_delivered(store: Store) -> bool:
    return all(row.delivered_at is not None for row in store.outbox())


# --- delivery -----------------------------------------------------------------------------


def test_messages_queued_while_the_receiver_is_down_arrive_once_and_in_order(
    clinic, receiver, market, executor
):
    port = free_port()
    values = [f"case-{i}" for i in range(5)]
    hours_ago = datetime.now(UTC) - timedelta(hours=3)  # queued long before the window
    with running(courier(clinic, executor, marketplace=f"http://127.0.0.1:{port}")) as first:
        clinic.post("marketplace", values, now=hours_ago)
        first.wake()
        wait_for(lambda: clinic.outbox()[0].attempts >= 2, "retries against the down receiver", 30)
    # The clinic restarted meanwhile: nothing was delivered, nothing is lost.
    rows = clinic.outbox()
    assert [row.delivered_at for row in rows] == [None] * 5
    assert rows[0].last_error == "ClientConnectorError"
    assert all(row.attempts == 0 for row in rows[1:])  # the batch stopped at the first failure

    with (
        serve(receiver.app(), port=port),
        running(courier(clinic, executor, marketplace=f"http://127.0.0.1:{port}")),
    ):
        wait_for(lambda: all_delivered(clinic), "delivery once the receiver is up")
        assert market.effects() == values
        assert market.count(Inbox) == 5
        assert receiver.statuses == [200] * 5


def test_a_lost_acknowledgement_does_not_apply_the_message_twice(
    clinic, receiver, market, executor
):
    receiver.drop_acks = 1
    with serve(receiver.app()) as url, running(courier(clinic, executor, marketplace=url)) as c:
        clinic.post("marketplace", ["once"])
        c.wake()
        wait_for(lambda: all_delivered(clinic), "delivery after the lost ack")
    (row,) = clinic.outbox()
    assert row.attempts == 1 and row.last_error == "ServerDisconnectedError"
    assert receiver.captured[0] != receiver.captured[1]  # re-sealed: a fresh sent_at
    assert market.effects() == ["once"]
    assert market.count(Inbox) == 1


def test_a_failing_handler_changes_nothing_and_the_retry_applies_it_in_order(
    clinic, receiver, market, executor
):
    receiver.fail_values = {"a"}
    with serve(receiver.app()) as url, running(courier(clinic, executor, marketplace=url)) as c:
        clinic.post("marketplace", ["a", "b", "c"])
        c.wake()
        wait_for(lambda: all_delivered(clinic), "delivery after the handler's failure")
    assert receiver.statuses == [500, 200, 200, 200]
    assert market.effects() == ["a", "b", "c"]  # "b" waited for "a"
    assert market.count(Inbox) == 3
    assert [row.attempts for row in clinic.outbox()] == [1, 0, 0]
    assert clinic.outbox()[0].last_error == "HTTP 500 handler_failed"


def test_one_destination_down_does_not_hold_up_another(clinic, receiver, market, executor):
    down = f"http://127.0.0.1:{free_port()}"
    with serve(receiver.app()) as url:
        the_courier = courier(clinic, executor, marketplace=url, party1=down)
        with running(the_courier):
            clinic.post("party1", ["stuck"])
            clinic.post("marketplace", ["flows"])
            the_courier.wake()
            wait_for(lambda: market.effects() == ["flows"], "delivery to the live destination")
            wait_for(lambda: clinic.outbox()[0].attempts >= 1, "a try at the down destination")
            # the receiver applies before the courier records the delivery: wait for both
            wait_for(lambda: clinic.outbox()[1].delivered_at is not None, "delivery recorded")
    stuck, flowed = clinic.outbox()
    assert stuck.delivered_at is None and flowed.delivered_at is not None


@pytest.mark.parametrize(
    ("key", "me", "destination", "error"),
    [
        ("not hex", "clinic", "marketplace", "private key"),
        (CLINIC_KEY, "the clinic", "marketplace", "sender"),
        (CLINIC_KEY, "clinic", "", "audience"),
    ],
)
def test_the_courier_refuses_a_bad_configuration_at_once(key, me, destination, error):
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match=error):
        Courier(me, key, {destination: "http://127.0.0.1:1"}, sessionmaker(), Outbox, pool)


# --- what a third party can do ------------------------------------------------------------


def test_a_replayed_request_is_not_applied_twice_and_a_late_one_is_refused(
    clinic, receiver, market, executor
):
    with serve(receiver.app()) as url:
        with running(courier(clinic, executor, marketplace=url)) as the_courier:
            clinic.post("marketplace", ["paid"])
            the_courier.wake()
            wait_for(lambda: all_delivered(clinic), "delivery")
        (captured,) = receiver.captured

        assert send(url, captured) == (200, {"accepted": False})
        receiver.clock.offset = 301.0
        status, answer = send(url, captured)
        assert (status, answer["error"]) == (401, "stale_message")
    assert market.effects() == ["paid"]
    assert market.count(Inbox) == 1


def test_a_forged_message_is_refused_and_has_no_effect(receiver, market):
    genuine = json.loads(sealed(value="genuine"))
    tampered = canonical_json({**genuine, "body": {"value": "tampered"}})
    with serve(receiver.app()) as url:
        for raw, status, code in [
            (tampered, 401, "forged_message"),
            (sealed(generate_key(), value="wrong key"), 401, "forged_message"),
            (sealed(MARKET_KEY, sender="marketplace"), 401, "unknown_sender"),
            (sealed(audience="party1"), 403, "misaddressed_message"),
            (sealed(sent_at=time.time() - 3600), 401, "stale_message"),
            (sealed(type="ledger.credit"), 400, "unknown_message_type"),
            (b"{not json", 400, "malformed_message"),
            (b"[" * 100_000, 400, "malformed_message"),
            (b" " * (MAX_MESSAGE_BYTES + 1), 400, "malformed_message"),
        ]:
            answer = send(url, raw)
            assert (answer[0], answer[1]["error"]) == (status, code), raw[:80]
        assert send(url, canonical_json(genuine)) == (200, {"accepted": True})
    assert market.effects() == ["genuine"]
    assert market.count(Inbox) == 1


@pytest.mark.parametrize("misbehave", ["commit", "rollback"])
def test_a_handler_cannot_split_its_effect_from_the_inbox_record(receiver, market, misbehave):
    """A handler that commits (or rolls back) itself would make the effect and the inbox row
    commit separately: at most once, or more than once. The inbox refuses and changes nothing."""
    receiver.misbehave = misbehave
    with serve(receiver.app()) as url:
        status, answer = send(url, sealed(value="split"))
    assert (status, answer["error"]) == (500, "handler_failed")
    assert market.effects() == []
    assert market.count(Inbox) == 0
