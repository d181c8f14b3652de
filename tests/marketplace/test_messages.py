"""The marketplace's message link with the clinic, over real HTTP with a real database.

In: the clinic's signed ``case.opened`` on ``POST /messages`` opens the case exactly once and
nothing else gets in. Out: each claim's ``seat.granted`` and each settlement's
``case.settled`` reach the clinic exactly once, signed with the marketplace's key, also when
the clinic was down at the time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
import requests
from aiohttp import web
from sqlalchemy import func, select

from infra.messaging import (
    Envelope,
    ForgedMessage,
    generate_key,
    new_message_id,
    open_sealed,
    public_key,
    seal,
)
from infra.net import free_port
from marketplace import ledger
from marketplace.domain.ledger import escrow_account
from marketplace.domain.pricing import price_bounty
from marketplace.messages import CLINIC, MARKETPLACE, CaseSettled, CasesTaught, SeatGranted
from marketplace.service import MarketplaceSettings, create_app
from marketplace.storage.models import Case, Inbox, LedgerTransaction, Outbox
from tests.marketplace.clinic import FakeClinic, sealed_case_opened
from tests.marketplace.flows import MODEL_SHA, T0, case_opened, to_clinic
from tests.marketplace.servers import serve

MARKET_KEY = generate_key()
CLINIC_KEY = generate_key()


def _settings(db_url: str, clinic_url: str = "http://127.0.0.1:9", **kw) -> MarketplaceSettings:
    return MarketplaceSettings(
        **{
            "db_url": db_url,
            "signing_key": MARKET_KEY,
            "clinic_public_key": public_key(CLINIC_KEY),
            "patient_base_url": clinic_url,
            "courier_poll_s": 0.05,
            "courier_max_backoff_s": 0.2,
            **kw,
        }
    )


@pytest.fixture
def market(db_url) -> Iterator[str]:
    with serve(create_app(_settings(db_url))) as url:
        yield url


def _post(url: str, raw: bytes) -> requests.Response:
    return requests.post(
        f"{url}/messages", data=raw, headers={"Content-Type": "application/json"}, timeout=10
    )


def _count(session, model) -> int:
    session.expire_all()
    count = session.scalar(select(func.count()).select_from(model))
    session.commit()
    return int(count or 0)


def _register(url: str, name: str) -> tuple[str, str]:
    r = requests.post(
        f"{url}/api/doctors",
        json={"display_name": name, "specialty": "neuroradiology"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()["doctor_id"], r.json()["token"]


def _call(url: str, method: str, path: str, token: str, **kw) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.request(method, f"{url}{path}", headers=headers, timeout=10, **kw)


def _poll(fn, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


def test_case_opened_from_the_clinic_opens_the_case_once(market, session) -> None:
    message = case_opened(confidence=0.95)
    raw = sealed_case_opened(message, CLINIC_KEY)
    r = _post(market, raw)
    assert (r.status_code, r.json()) == (200, {"accepted": True})
    case = session.get(Case, message.case_id)
    assert case.status == "open" and case.bounty == price_bounty(0.95)
    _, token = _register(market, "Dr Pool")
    pool = _call(market, "GET", "/api/pool", token).json()["cases"]
    assert [c["case_id"] for c in pool] == [message.case_id]

    # The same sealed bytes again (a lost acknowledgement, or a replay): no second case or escrow.
    r = _post(market, raw)
    assert (r.status_code, r.json()) == (200, {"accepted": False})
    # A new message about the same case (the clinic re-posted it): applied, changes nothing.
    again = sealed_case_opened(replace(message, confidence=0.6), CLINIC_KEY)
    assert _post(market, again).json() == {"accepted": True}
    assert _count(session, Case) == 1 and _count(session, Inbox) == 2
    session.expire_all()
    assert session.get(Case, message.case_id).confidence == 0.95
    assert ledger.balance(session, escrow_account(message.case_id)) == price_bounty(0.95)
    funded = session.scalars(select(LedgerTransaction.kind)).all()
    assert funded == ["fund_escrow", "royalty_fee"]  # the royalty fee once, with the case


@pytest.mark.parametrize(
    ("how", "status", "code"),
    [
        ("forged", 401, "forged_message"),
        ("unknown_sender", 401, "unknown_sender"),
        ("misaddressed", 403, "misaddressed_message"),
        ("stale", 401, "stale_message"),
        ("tampered", 401, "forged_message"),
        ("garbage", 400, "malformed_message"),
    ],
)
def test_messages_not_from_the_clinic_are_refused_and_change_nothing(
    market, session, how, status, code
) -> None:
    message = case_opened()
    raw = {
        "forged": lambda: sealed_case_opened(message, generate_key()),
        "unknown_sender": lambda: sealed_case_opened(message, CLINIC_KEY, sender="mallory"),
        "misaddressed": lambda: sealed_case_opened(message, CLINIC_KEY, audience=CLINIC),
        "stale": lambda: sealed_case_opened(message, CLINIC_KEY, sent_at=time.time() - 3600),
        "tampered": lambda: sealed_case_opened(message, CLINIC_KEY).replace(
            b'"confidence":0.9', b'"confidence":0.5'
        ),
        "garbage": lambda: b"{not json",
    }[how]()
    r = _post(market, raw)
    assert (r.status_code, r.json()["error"]) == (status, code)
    assert _count(session, Case) == 0 and _count(session, Inbox) == 0
    assert ledger.all_balances(session) == {}


def test_a_bad_case_from_the_clinic_is_not_applied_so_it_is_retried(market, session) -> None:
    """A body the market refuses (confidence above 1) is rolled back whole: no inbox row,
    so the clinic's courier keeps it at the head of its outbox, visible, not lost."""
    raw = sealed_case_opened(replace(case_opened(), confidence=1.5), CLINIC_KEY)
    r = _post(market, raw)
    assert (r.status_code, r.json()["error"]) == (500, "handler_failed")
    assert _count(session, Case) == 0 and _count(session, Inbox) == 0


def test_without_the_clinic_public_key_every_message_is_refused(db_url, session) -> None:
    with serve(create_app(_settings(db_url, clinic_public_key=""))) as url:
        r = _post(url, sealed_case_opened(case_opened(), CLINIC_KEY))
    assert (r.status_code, r.json()["error"]) == (401, "unknown_sender")
    assert _count(session, Case) == 0


def _review(url: str, case_id: str, n: int = 3, also_voting: tuple[str, ...] = ()) -> list[str]:
    """n new doctors claim the case, then they and ``also_voting`` (tokens of doctors already
    on the panel) vote ``tumor`` over HTTP; returns the new doctors' ids."""
    doctors = [_register(url, f"Dr {i}") for i in range(n)]
    for _, token in doctors:
        assert _call(url, "POST", f"/api/cases/{case_id}/claim", token).status_code == 201
    for token in [*also_voting, *(token for _, token in doctors)]:
        body = {"case_id": case_id, "label": "tumor"}
        assert _call(url, "POST", "/decision", token, json=body).status_code == 201
    return [doctor_id for doctor_id, _ in doctors]


def test_seats_and_the_diagnosis_reach_the_clinic_once_signed_by_the_market(
    db_url, session
) -> None:
    clinic = FakeClinic(public_key(MARKET_KEY))
    with serve(clinic.app()) as clinic_url:
        with serve(create_app(_settings(db_url, clinic_url))) as url:
            message = case_opened(confidence=0.9)
            assert _post(url, sealed_case_opened(message, CLINIC_KEY)).json()["accepted"]
            _, token = _register(url, "Dr First")
            assert (
                _call(url, "POST", f"/api/cases/{message.case_id}/claim", token).status_code == 201
            )
            # One claim: one seat.granted in the outbox, delivered to the clinic.
            (seat,) = to_clinic(session, "seat.granted")
            granted = _poll(lambda: clinic.bodies("seat.granted"))
            assert granted == [{k: v for k, v in seat.items() if k != "type"}]
            assert SeatGranted.parse(granted[0]).case_id == message.case_id

            others = _review(url, message.case_id, 2, also_voting=(token,))
            _poll(lambda: clinic.bodies("case.settled"))
            # Let the courier look at the outbox again: nothing more is sent.
            time.sleep(0.3)
    (settled,) = clinic.bodies("case.settled")
    diagnosis = CaseSettled.parse(settled)
    assert (diagnosis.case_id, diagnosis.diagnosis, diagnosis.reviewers) == (
        message.case_id,
        "tumor",
        3,
    )
    assert len(to_clinic(session, "case.settled")) == 1
    assert [b["doctor_id"] for b in clinic.bodies("seat.granted")][1:] == others
    assert clinic.refused == 0 and clinic.deliveries == 4
    assert all(e.sender == MARKETPLACE and e.audience == CLINIC for e in clinic.received)


def test_the_diagnosis_waits_in_the_outbox_while_the_clinic_is_down(db_url, session) -> None:
    """Settled while the clinic is unreachable, then while it answers 503: every message is
    delivered once it is back, in order, none twice."""
    clinic = FakeClinic(public_key(MARKET_KEY), refuse=True)
    clinic_port = free_port("127.0.0.1")
    settings = _settings(db_url, f"http://127.0.0.1:{clinic_port}")
    with serve(create_app(settings)) as url:
        message = case_opened()
        assert _post(url, sealed_case_opened(message, CLINIC_KEY)).json()["accepted"]
        ids = _review(url, message.case_id)
        assert len(to_clinic(session, "case.settled")) == 1
        _poll(lambda: _outbox(session)[0][1] > 0)  # tried: connection refused
        with serve(clinic.app(), port=clinic_port):
            _poll(lambda: clinic.busy > 0)  # up, but not applying yet
            assert clinic.received == []
            clinic.refuse = False
            _poll(lambda: all(delivered for delivered, _ in _outbox(session)))
        time.sleep(0.3)  # the courier looks again: nothing more is sent
    assert [e.type for e in clinic.received] == ["seat.granted"] * 3 + ["case.settled"]
    assert [b["doctor_id"] for b in clinic.bodies("seat.granted")] == ids
    assert clinic.bodies("case.settled")[0]["case_id"] == message.case_id
    assert clinic.deliveries == 4 and clinic.refused == 0


def _outbox(session) -> list[tuple[bool, int]]:
    """(delivered, attempts) of each outbox row, oldest first."""
    session.expire_all()
    rows = session.execute(select(Outbox.delivered_at, Outbox.attempts).order_by(Outbox.id)).all()
    session.commit()
    return [(delivered is not None, attempts) for delivered, attempts in rows]


def test_metrics_count_messages_not_yet_delivered(db_url, session) -> None:
    with serve(create_app(_settings(db_url, metrics_interval_s=0.05))) as url:
        message = case_opened()
        assert _post(url, sealed_case_opened(message, CLINIC_KEY)).json()["accepted"]
        _review(url, message.case_id)

        def gauge():
            for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
                if line.startswith("crypto_doctor_outbox_undelivered "):
                    value = float(line.split()[1])
                    return value if value == 4 else None
            return None

        assert _poll(gauge) == 4  # three seats and one diagnosis, the clinic unreachable


def test_what_the_market_sends_verifies_only_with_its_public_key(db_url, session) -> None:
    """The courier's bytes open with the marketplace's public key, not with another."""
    captured: list[bytes] = []

    async def messages(request: web.Request) -> web.Response:
        captured.append(await request.read())
        return web.json_response({"accepted": True})

    sink = web.Application()
    sink.router.add_post("/messages", messages)
    with serve(sink) as clinic_url, serve(create_app(_settings(db_url, clinic_url))) as url:
        message = case_opened()
        assert _post(url, sealed_case_opened(message, CLINIC_KEY)).json()["accepted"]
        _, token = _register(url, "Dr Seat")
        assert _call(url, "POST", f"/api/cases/{message.case_id}/claim", token).status_code == 201
        _poll(lambda: captured)
    raw = captured[0]
    envelope = open_sealed(
        raw, me=CLINIC, peers={MARKETPLACE: public_key(MARKET_KEY)}, now=time.time()
    )
    assert envelope.type == "seat.granted" and envelope.body["case_id"] == message.case_id
    with pytest.raises(ForgedMessage):
        open_sealed(raw, me=CLINIC, peers={MARKETPLACE: public_key(CLINIC_KEY)}, now=time.time())
    assert MARKET_KEY not in raw.decode() and json.loads(raw)["sender"] == MARKETPLACE


def _sealed_taught(message: CasesTaught) -> bytes:
    body = message.body()
    envelope = Envelope(new_message_id(), CasesTaught.TYPE, CLINIC, MARKETPLACE, time.time(), body)
    return seal(envelope, CLINIC_KEY)


def test_cases_that_taught_the_serving_model_count_on_each_doctors_track_record(
    market, session
) -> None:
    first = case_opened(confidence=0.9)
    assert _post(market, sealed_case_opened(first, CLINIC_KEY)).json()["accepted"]
    _, token = _register(market, "Dr Teacher")
    assert _call(market, "POST", f"/api/cases/{first.case_id}/claim", token).status_code == 201
    _review(market, first.case_id, 2, also_voting=(token,))

    def taught() -> int:
        record = _call(market, "GET", "/api/me/track-record", token).json()
        assert record["settled"] == 1
        return int(record["taught_serving_model"])

    assert taught() == 0
    # A promoted round: the settled case taught F1 (an id the market does not know is skipped).
    f1, f2 = "f1" * 32, "f2" * 32
    promoted = CasesTaught(f1, MODEL_SHA, (first.case_id, "0" * 32), T0 + timedelta(hours=1))
    assert _post(market, _sealed_taught(promoted)).json() == {"accepted": True}
    assert taught() == 0  # F1 does not serve yet
    serving = replace(case_opened(now=T0 + timedelta(hours=2)), model_sha256=f1)
    assert _post(market, sealed_case_opened(serving, CLINIC_KEY)).json()["accepted"]
    assert taught() == 1
    # F2, fine-tuned from F1 on other cases, serves: what taught F1 taught it too.
    again = CasesTaught(f2, f1, ("1" * 32,), T0 + timedelta(hours=3))
    assert _post(market, _sealed_taught(again)).json()["accepted"]
    newest = replace(case_opened(now=T0 + timedelta(hours=4)), model_sha256=f2)
    assert _post(market, sealed_case_opened(newest, CLINIC_KEY)).json()["accepted"]
    assert taught() == 1
    # Back to the seed model (a rollback): its lineage holds no taught case.
    rolled_back = case_opened(now=T0 + timedelta(hours=5))
    assert _post(market, sealed_case_opened(rolled_back, CLINIC_KEY)).json()["accepted"]
    assert taught() == 0
    # A body that does not validate is not applied (kept at the head of the clinic's outbox).
    inboxed = _count(session, Inbox)
    bad = Envelope(new_message_id(), CasesTaught.TYPE, CLINIC, MARKETPLACE, time.time(),
                   {**promoted.body(), "case_ids": []})  # fmt: skip
    assert _post(market, seal(bad, CLINIC_KEY)).status_code == 500
    assert _count(session, Inbox) == inboxed
