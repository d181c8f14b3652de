"""One doctor cannot hold up every case, and accounts cannot be minted without limit.

The cap on open claims, the claim rate per doctor and the registration rate (all clients
together) are counted in the database: they hold in every process sharing it, across
restarts, and under concurrent requests (on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests

from infra.messaging import generate_key, public_key
from infra.net import free_port
from marketplace import doctors, review
from marketplace.domain.policy import MarketPolicy
from marketplace.errors import RateLimited, TooManyOpenClaims
from marketplace.service import MarketplaceSettings, create_app
from tests.marketplace.flows import make_doctors, open_case, to_clinic
from tests.marketplace.helpers import T0
from tests.marketplace.servers import Api, serve

T1 = T0 + timedelta(minutes=1)
#: Rate limits far out of the way, for tests of something else.
ROOMY = {"claim_rate_limit": 1000, "registration_rate_limit": 1000}


def _claim(session, doctor_id: str, case_id: str, at: datetime, policy: MarketPolicy) -> None:
    review.claim_case(session, doctor_id, case_id, now=at, policy=policy)


def test_open_claims_are_capped_until_the_doctor_votes(session) -> None:
    policy = MarketPolicy(**ROOMY)  # the default cap: 3
    cases = [open_case(session) for _ in range(5)]
    ((doctor, _), (other, _)) = make_doctors(session, 2)
    for case_id in cases[:3]:
        _claim(session, doctor, case_id, T1, policy)
    with pytest.raises(TooManyOpenClaims):
        _claim(session, doctor, cases[3], T1, policy)
    _claim(session, other, cases[3], T1, policy)  # a cap per doctor: the case is still open
    # Neither waiting nor an escalation releases the cap (no seat is ever freed): a vote does.
    review.escalate_overdue(session, now=T0 + policy.review_window * 2, policy=policy)
    later = T0 + policy.review_window * 2 + timedelta(minutes=1)
    with pytest.raises(TooManyOpenClaims):
        _claim(session, doctor, cases[3], later, policy)
    review.cast_vote(session, doctor, cases[0], label="tumor", note=None, now=later)
    _claim(session, doctor, cases[3], later, policy)
    with pytest.raises(TooManyOpenClaims):
        _claim(session, doctor, cases[4], later, policy)
    # Refused claims took no seat and told the clinic nothing.
    granted = [(m["case_id"], m["doctor_id"]) for m in to_clinic(session, "seat.granted")]
    assert granted.count((cases[4], doctor)) == 0 and len(granted) == 5


def test_claims_per_doctor_are_rate_limited_over_a_sliding_window(session) -> None:
    policy = MarketPolicy(max_open_claims=10, claim_rate_limit=3)  # 3 per hour
    cases = [open_case(session) for _ in range(5)]
    ((doctor, _), (other, _)) = make_doctors(session, 2)
    for minute, case_id in enumerate(cases[:3]):
        _claim(session, doctor, case_id, T0 + timedelta(minutes=minute), policy)
    at = T0 + timedelta(minutes=30)
    with pytest.raises(RateLimited) as refused:
        _claim(session, doctor, cases[3], at, policy)
    assert refused.value.retry_after_s == 30 * 60  # when the first claim leaves the hour
    assert refused.value.code == "rate_limited"
    _claim(session, other, cases[3], at, policy)  # the limit is per doctor
    # Once the first claim left the hour, one more: the refused one was not counted.
    _claim(session, doctor, cases[3], T0 + timedelta(hours=1, seconds=1), policy)
    with pytest.raises(RateLimited):
        _claim(session, doctor, cases[4], T0 + timedelta(hours=1, seconds=2), policy)


def test_self_registration_is_rate_limited_for_all_clients_together(session) -> None:
    policy = MarketPolicy(registration_rate_limit=2)

    def register(name: str, at: datetime) -> None:
        doctors.register_doctor(
            session, display_name=name, specialty="neuro", now=at, policy=policy
        )

    register("S0", T0)
    register("S1", T0)
    with pytest.raises(RateLimited) as refused:
        register("S2", T1)
    assert refused.value.retry_after_s == 3600 - 60
    # The operator's own command is not limited; the window moves on.
    doctors.create_doctor(session, display_name="Op", specialty="neuro", now=T1)
    register("S2", T0 + timedelta(hours=1, seconds=1))


def test_limits_are_exact_under_concurrent_claims(session_factory, session) -> None:
    """Six claims by one doctor at once, from six connections: exactly the cap succeeds, and
    with a lower rate limit, exactly the rate."""
    ((doctor, _), (fast, _)) = make_doctors(session, 2)

    def race(doctor_id: str, policy: MarketPolicy) -> int:
        cases = [open_case(session) for _ in range(6)]

        def claim(case_id: str) -> bool:
            with session_factory() as s:
                try:
                    _claim(s, doctor_id, case_id, T1, policy)
                    return True
                except (TooManyOpenClaims, RateLimited):
                    return False

        with ThreadPoolExecutor(6) as pool:
            return sum(pool.map(claim, cases))

    assert race(doctor, MarketPolicy(**ROOMY)) == 3
    assert race(fast, MarketPolicy(max_open_claims=10, claim_rate_limit=2)) == 2


# ---- over HTTP, across processes and restarts --------------------------------------------

MARKET_KEY = generate_key()
LIMITS = MarketPolicy(max_open_claims=2, claim_rate_limit=3, registration_rate_limit=3)


def _settings(db_url: str) -> MarketplaceSettings:
    return MarketplaceSettings(
        db_url=db_url,
        signing_key=MARKET_KEY,
        clinic_public_key=public_key(generate_key()),
        patient_base_url="http://127.0.0.1:9",
        escalation_interval_s=3600,
        policy=LIMITS,
    )


def _register(api: Api, name: str) -> requests.Response:
    return api("POST", "/api/doctors", json={"display_name": name, "specialty": "neuro"})


def _standalone(db_url: str, port: int) -> subprocess.Popen[bytes]:
    """``python -m marketplace.service`` with the same limits, by flags, as operators run it."""
    argv = ["--db-url", db_url, "--port", str(port), "--escalation-interval-s", "3600"]
    argv += ["--patient-base-url", "http://127.0.0.1:9"]
    argv += ["--max-open-claims", "2", "--claim-rate-limit", "3"]
    argv += ["--registration-rate-limit", "3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_DOCTOR_")}
    return subprocess.Popen(
        [sys.executable, "-m", "marketplace.service", *argv],
        env=env | {"CRYPTO_DOCTOR_MARKET_KEY": MARKET_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_until_up(api: Api, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if api("GET", "/healthz").status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("the standalone marketplace did not answer in time")


def test_limits_answer_409_and_429_in_every_process_and_after_a_restart(db_url, session) -> None:
    cases = [open_case(session, now=datetime.now(UTC)) for _ in range(4)]
    port = free_port()
    other = Api(f"http://127.0.0.1:{port}")
    proc = _standalone(db_url, port)
    try:
        with serve(create_app(_settings(db_url))) as url:
            here = Api(url)
            _wait_until_up(other, proc)
            # Registrations: three in the hour, counted across both processes.
            tokens = []
            for api, name in ((here, "A"), (other, "B"), (here, "C")):
                r = _register(api, name)
                assert r.status_code == 201, r.text
                tokens.append(r.json()["token"])
            for api in (here, other):
                r = _register(api, "D")
                assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
            # Claims: two open at a time, three in the hour, whichever process takes them.
            a = tokens[0]
            assert here("POST", f"/api/cases/{cases[0]}/claim", a).status_code == 201
            assert other("POST", f"/api/cases/{cases[1]}/claim", a).status_code == 201
            r = here("POST", f"/api/cases/{cases[2]}/claim", a)
            assert (r.status_code, r.json()["error"]) == (409, "too_many_open_claims")
            vote = {"case_id": cases[0], "label": "tumor"}
            assert other("POST", "/decision", a, json=vote).status_code == 201
            assert here("POST", f"/api/cases/{cases[2]}/claim", a).status_code == 201
            vote = {"case_id": cases[1], "label": "tumor"}
            assert here("POST", "/decision", a, json=vote).status_code == 201
            r = other("POST", f"/api/cases/{cases[3]}/claim", a)
            assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # A restarted service counts what its predecessors recorded.
    with serve(create_app(_settings(db_url))) as url:
        restarted = Api(url)
        r = _register(restarted, "E")
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
        r = restarted("POST", f"/api/cases/{cases[3]}/claim", tokens[0])
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
        assert restarted("POST", f"/api/cases/{cases[3]}/claim", tokens[1]).status_code == 201
