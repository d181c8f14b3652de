"""Doctor service over real HTTP with a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from infra.messaging import generate_key, public_key
from infra.net import free_port
from marketplace import ledger
from marketplace.domain.consensus import verify_receipt
from marketplace.domain.ledger import doctor_account, escrow_account
from marketplace.domain.policy import MarketPolicy
from marketplace.domain.pricing import price_bounty
from marketplace.service import MarketplaceSettings, create_app
from tests.marketplace.clinic import sealed_case_opened
from tests.marketplace.flows import case_opened, open_case, to_clinic
from tests.marketplace.servers import serve

MARKET_KEY = generate_key()
CLINIC_KEY = generate_key()
FAKE = "0123456789abcdef" * 2


@dataclass
class Service:
    url: str
    session_factory: object

    def register(self, name: str = "Dr X") -> str:
        r = requests.post(
            f"{self.url}/api/doctors",
            json={"display_name": name, "specialty": "neuroradiology"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def call(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kw)


def _settings(db_url: str, **kw) -> MarketplaceSettings:
    return MarketplaceSettings(
        db_url=db_url,
        signing_key=MARKET_KEY,
        clinic_public_key=public_key(CLINIC_KEY),
        patient_base_url="http://127.0.0.1:9",
        csv_poll_interval_s=0.05,
        **kw,
    )


@pytest.fixture
def service(db_url, session_factory) -> Iterator[Service]:
    with serve(create_app(_settings(db_url))) as url:
        yield Service(url, session_factory)


def _deadline_poll(fn, timeout: float = 20.0, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met before the deadline")


PROTECTED = [
    ("GET", "/api/me"),
    ("GET", "/api/me/history"),
    ("GET", "/api/pool"),
    ("GET", "/api/claims"),
    ("POST", f"/api/cases/{FAKE}/claim"),
    ("GET", f"/api/cases/{FAKE}/image-link"),
    ("GET", f"/api/cases/{FAKE}/disclosure"),
    ("POST", "/decision"),
]


def test_every_doctor_endpoint_needs_a_valid_token(service: Service) -> None:
    for method, path in PROTECTED:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-123456789012345"},
            {"Authorization": "Basic abc"},
        ):
            r = requests.request(
                method,
                service.url + path,
                headers=headers,
                json={"case_id": FAKE, "label": "tumor"},
                timeout=10,
            )
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "unauthorized"


def test_three_doctor_panel_over_http(service: Service, session) -> None:
    case_id = open_case(session, confidence=0.95)
    tokens = [service.register(f"Dr {i}") for i in range(3)]
    ids = [service.call("GET", "/api/me", t).json()["doctor_id"] for t in tokens]
    for token, doctor_id in zip(tokens, ids, strict=True):
        assert [c["case_id"] for c in service.call("GET", "/api/pool", token).json()["cases"]] == [
            case_id
        ]
        r = service.call("POST", f"/api/cases/{case_id}/claim", token)
        assert r.status_code == 201, r.text
        link = urlsplit(r.json()["image_url"])
        q = {k: v[0] for k, v in parse_qs(link.query).items()}
        # The image is the clinic's to show: the marketplace only points at its viewer.
        assert link.path == "/viewer" and q == {"case": case_id, "doctor": doctor_id}

    notes = ["first-secret-note", "second-secret-note"]
    receipts = []
    for token, note in zip(tokens[:2], notes, strict=True):
        r = service.call(
            "POST", "/decision", token, json={"case_id": case_id, "label": "tumor", "note": note}
        )
        assert r.status_code == 201, r.text
        receipts.append(r.json()["receipt"])
    # Before settlement no endpoint shows any vote, note, salt or tally to anyone.
    _assert_sealed(service, tokens, case_id, notes)
    # The clinic has heard of the three seats, and of nothing a vote did.
    told = to_clinic(session)
    assert [(m["type"], m["doctor_id"]) for m in told] == [("seat.granted", d) for d in ids]
    assert not any(secret in json.dumps(told) for secret in (*notes, "tumor", "label"))

    r = service.call("POST", "/decision", tokens[2], json={"case_id": case_id, "label": "tumor"})
    assert r.status_code == 201
    receipts.append(r.json()["receipt"])

    (settled,) = to_clinic(session, "case.settled")  # the patient's diagnosis, posted once
    assert (settled["case_id"], settled["diagnosis"], settled["reviewers"]) == (
        case_id,
        "tumor",
        3,
    )
    balances = [service.call("GET", "/api/me", t).json()["balance"] for t in tokens]
    assert sum(balances) == price_bounty(0.95)
    assert ledger.balance(session, escrow_account(case_id)) == 0
    for token in tokens:
        disclosed = service.call("GET", f"/api/cases/{case_id}/disclosure", token).json()
        assert sorted(receipts) == [v["receipt"] for v in disclosed["votes"]]
        assert all(
            verify_receipt(case_id, v["label"], v["salt"], v["receipt"]) for v in disclosed["votes"]
        )
        history = service.call("GET", "/api/me/history", token).json()["settled"]
        assert history[0]["case_id"] == case_id and history[0]["agreed"]
    assert [ledger.balance(session, doctor_account(i)) for i in ids] == balances


def _assert_sealed(service: Service, tokens: list[str], case_id: str, notes: list[str]) -> None:
    for token in tokens:
        for method, path in PROTECTED:
            path = path.replace(FAKE, case_id)
            if method == "POST":
                continue
            r = service.call(method, path, token)
            body = r.text
            if path == "/api/claims":  # the model's label, once you voted yourself, is no vote
                cards = r.json()["cases"]
                assert all((c["model_label"] is None) is (not c["voted"]) for c in cards)
                body = json.dumps(
                    [{k: v for k, v in c.items() if k != "model_label"} for c in cards]
                )
            for secret in notes:
                assert secret not in body, path
            for forbidden in ('"label"', '"salt"', '"votes"', '"tally"', "tumor"):
                assert forbidden not in body, (path, body)
        r = service.call("GET", f"/api/cases/{case_id}/disclosure", token)
        assert r.status_code == 409 and r.json()["error"] == "not_settled"
    # The research stream is the operator's, and holds only released rows anyway.
    assert requests.get(f"{service.url}/decisions.csv?follow=0", timeout=10).status_code == 403


def test_double_votes_and_outsiders_refused(service: Service, session) -> None:
    case_id = open_case(session)
    member, outsider = service.register("Member"), service.register("Outsider")
    assert service.call("POST", f"/api/cases/{case_id}/claim", member).status_code == 201
    assert (
        service.call("POST", f"/api/cases/{case_id}/claim", member).json()["error"]
        == "already_claimed"
    )
    r = service.call("POST", "/decision", outsider, json={"case_id": case_id, "label": "tumor"})
    assert (r.status_code, r.json()["error"]) == (403, "not_on_panel")
    r = service.call("GET", f"/api/cases/{case_id}/image-link", outsider)
    assert (r.status_code, r.json()["error"]) == (403, "not_on_panel")
    r = service.call("GET", f"/api/cases/{case_id}/disclosure", outsider)
    assert r.status_code == 403
    r = service.call("POST", "/decision", member, json={"case_id": case_id, "label": "glioma"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_input")
    r = requests.post(
        f"{service.url}/decision",
        data="{not json",
        headers={"Authorization": f"Bearer {member}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
    assert (
        service.call(
            "POST", "/decision", member, json={"case_id": case_id, "label": "tumor"}
        ).status_code
        == 201
    )
    r = service.call("POST", "/decision", member, json={"case_id": case_id, "label": "no_tumor"})
    assert (r.status_code, r.json()["error"]) == (409, "already_voted")
    r = service.call("POST", "/decision", member, json={"case_id": FAKE, "label": "tumor"})
    assert (r.status_code, r.json()["error"]) == (404, "case_not_found")
    r = service.call("POST", f"/api/cases/{FAKE}/claim", member)
    assert r.status_code == 404
    claims = service.call("GET", "/api/claims", member).json()["cases"]
    assert claims[0]["voted"] and "label" not in claims[0]


def test_registration_validates_input(service: Service) -> None:
    r = requests.post(
        f"{service.url}/api/doctors",
        json={"display_name": "Dr W", "specialty": "neuro", "wallet_address": "0x123"},
        timeout=10,
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_input")
    r = requests.post(f"{service.url}/api/doctors", json={"display_name": "Dr W"}, timeout=10)
    assert r.status_code == 400
    r = requests.post(
        f"{service.url}/api/doctors",
        json={"display_name": "Dr W", "specialty": "neuro", "wallet_address": "0x" + "ab" * 20},
        timeout=10,
    )
    assert r.status_code == 201
    me = service.call("GET", "/api/me", r.json()["token"]).json()
    assert (
        me["wallet_address"] == "0x" + "ab" * 20 and me["reputation"] == 100 and me["balance"] == 0
    )


def test_service_escalates_overdue_cases(db_url, session) -> None:
    policy = MarketPolicy(review_window=timedelta(milliseconds=200))
    settings = _settings(db_url, policy=policy, escalation_interval_s=0.05)
    case_id = open_case(session, confidence=0.6, now=datetime.now(UTC), policy=policy)
    start = price_bounty(0.6)
    with serve(create_app(settings)) as url:
        service = Service(url, None)
        token = service.register()  # tier 0: this tier-1 case is hidden until escalated

        def escalated():
            pool = service.call("GET", "/api/pool", token).json()["cases"]
            return pool if pool and pool[0]["escalation_level"] >= 1 else None

        pool = _deadline_poll(escalated)
    assert pool[0]["case_id"] == case_id and pool[0]["bounty"] > start
    assert ledger.balance(session, escrow_account(case_id)) == cases_bounty(session, case_id)
    assert sum(ledger.all_balances(session).values()) == 0


def cases_bounty(session, case_id: str) -> int:
    from marketplace.storage.models import Case

    session.expire_all()
    return session.get(Case, case_id).bounty


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CRYPTO_DOCTOR_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_DOCTOR_")}
    return env | extra


def test_help_lists_the_flags_and_no_secret() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "marketplace.service", "--help"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for flag in (
        "--db-url",
        "--host",
        "--port",
        "--patient-base-url",
        "--clinic-public-key",
        "--courier-max-backoff-s",
    ):
        assert flag in out, flag
    assert "CRYPTO_DOCTOR_MARKET_KEY" in out  # named, as environment only
    assert "--market-key" not in out and "--signing-key" not in out
    assert "--link-secret" not in out and "LINK_SECRET" not in out


def test_cli_and_standalone_service(db_url, session) -> None:
    """``python -m marketplace.service`` as the supervisor starts it: flags, the key by env;
    it takes the clinic's signed case and signs the doctor's image link with its key."""
    env = _clean_env(CRYPTO_DOCTOR_DB_URL=db_url)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketplace.doctors",
            "create",
            "--name",
            "Dr CLI",
            "--specialty",
            "neuroradiology",
            "--reputation",
            "150",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    created = json.loads(out.stdout)
    port = free_port()
    clinic_url = f"http://127.0.0.1:{free_port()}"
    argv = ["--db-url", db_url, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--patient-base-url", clinic_url, "--clinic-public-key", public_key(CLINIC_KEY)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketplace.service", *argv],
        env=_clean_env(CRYPTO_DOCTOR_MARKET_KEY=MARKET_KEY),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {created['token']}"}
    try:

        def me():
            try:
                r = requests.get(f"{base}/api/me", headers=auth, timeout=2)
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode()
                return None
            return r.json()

        profile = _deadline_poll(me, timeout=60, interval=0.2)
        assert profile["doctor_id"] == created["doctor_id"]
        assert profile["display_name"] == "Dr CLI" and profile["tier"] == 1
        # What the tier unlocks, so a doctor knows why a bigger bounty is not in their pool.
        assert (profile["bounty_limit"], profile["next_tier_reputation"]) == (3499, 200)

        message = case_opened(confidence=0.7)
        r = requests.post(
            f"{base}/messages", data=sealed_case_opened(message, CLINIC_KEY), timeout=10
        )
        assert r.json() == {"accepted": True}
        r = requests.post(f"{base}/api/cases/{message.case_id}/claim", headers=auth, timeout=10)
        assert r.status_code == 201, r.text
        link = urlsplit(r.json()["image_url"])
        q = {k: v[0] for k, v in parse_qs(link.query).items()}
        assert f"{link.scheme}://{link.netloc}" == clinic_url
        assert link.path == "/viewer"
        assert q == {"case": message.case_id, "doctor": created["doctor_id"]}
        (seat,) = to_clinic(session, "seat.granted")  # queued: no clinic listens there
        assert seat["doctor_id"] == created["doctor_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode in (0, -15)


def test_page_is_self_contained(service: Service) -> None:
    r = requests.get(f"{service.url}/", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert 'src="http' not in r.text and 'href="http' not in r.text  # no CDN
    for asset in ("/static/app.js", "/static/style.css"):
        assert requests.get(service.url + asset, timeout=10).status_code == 200
    r = requests.get(f"{service.url}/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
