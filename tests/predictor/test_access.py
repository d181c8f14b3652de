"""Party 0 decides who sees an image: enrolled doctors, their own keys, granted seats, caps.

The malicious model side is played by a test holding everything party 1's operator has: the
marketplace's signing key and store, so it can grant seats at will and sign anything the
marketplace can sign. It still cannot see an image without an enrolled doctor's key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from infra.messaging import generate_key
from infra.net import free_port
from predictor.access import store
from predictor.access.client import AccessRefused, fetch_image, new_key, signed_headers
from predictor.access.policy import AccessCaps
from predictor.access.protocol import (
    der_to_raw,
    load_public_key,
    public_key_text,
    raw_to_der,
    request_message,
    unb64url,
    verify_request,
)
from predictor.clinic.store import clinic_sessions
from tests.marketplace.servers import serve
from tests.predictor.orgs import Organisations, post_message, seat_message, submit

CAPS = AccessCaps(max_viewers_per_case=2, max_views_per_doctor_per_day=3)


@pytest.fixture
def orgs(tmp_path) -> Organisations:
    return Organisations(tmp_path, generate_key(), generate_key(), free_port(), free_port())


@pytest.fixture
def clinic(orgs) -> Iterator[str]:
    app, close = orgs.clinic_app(access_caps=CAPS, seat_wait_s=0.3)
    try:
        with serve(app, port=orgs.clinic_port) as url:
            yield url
    finally:
        close()


def enrol(orgs: Organisations, doctor_id: str) -> ec.EllipticCurvePrivateKey:
    key = new_key()
    with clinic_sessions(f"sqlite:///{orgs.clinic_db}")() as session:
        store.enrol(
            session,
            doctor_id=doctor_id,
            name=f"Dr {doctor_id[:4]}",
            licence="GMC 7000001",
            public_key=public_key_text(key.public_key()),
            now=datetime.now(UTC),
        )
    return key


def grant_seat(orgs: Organisations, clinic: str, case_id: str, doctor_id: str) -> None:
    reply = post_message(clinic, seat_message(case_id, doctor_id, key=orgs.market_key))
    assert reply.status_code == 200, reply.text


def refusal(clinic: str, case_id: str, headers: dict[str, str]) -> tuple[int, str]:
    reply = requests.get(f"{clinic}/image/{case_id}", headers=headers, timeout=10)
    return reply.status_code, reply.json()["error"] if reply.status_code != 200 else "served"


def audit(clinic: str, case: dict) -> list[dict]:
    reply = requests.get(
        f"{clinic}/case/{case['case_id']}/access",
        headers={"Authorization": f"Bearer {case['patient_token']}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["accesses"]


def test_an_enrolled_seated_doctor_gets_the_image_and_the_patient_sees_it(orgs, clinic, mri_images):
    path = mri_images["yes"][0]
    case = submit(clinic, path)
    key = enrol(orgs, "a" * 32)
    grant_seat(orgs, clinic, case["case_id"], "a" * 32)
    data, content_type = fetch_image(clinic, case["case_id"], "a" * 32, key)
    assert data == path.read_bytes() and content_type == "image/jpeg"
    (entry,) = audit(clinic, case)
    assert (entry["doctor"], entry["result"]) == ("a" * 32, "served")
    assert requests.get(f"{clinic}/case/{case['case_id']}/access", timeout=10).status_code == 401


def test_enrolled_without_a_seat_and_revoked_keys_are_refused(orgs, clinic, mri_images):
    case = submit(clinic, mri_images["no"][0])
    key = enrol(orgs, "b" * 32)
    headers = signed_headers(key, case["case_id"], "b" * 32)
    assert refusal(clinic, case["case_id"], headers) == (403, "no_seat")
    grant_seat(orgs, clinic, case["case_id"], "b" * 32)
    with clinic_sessions(f"sqlite:///{orgs.clinic_db}")() as session:
        assert store.revoke(session, doctor_id="b" * 32, now=datetime.now(UTC))
    revoked = signed_headers(key, case["case_id"], "b" * 32)
    assert refusal(clinic, case["case_id"], revoked) == (401, "revoked")
    results = [entry["result"] for entry in audit(clinic, case)]
    assert results == ["no_seat", "revoked"]


def test_the_malicious_model_side_cannot_see_an_image(orgs, clinic, mri_images):
    """Party 1's operator holds the marketplace's key and store; every attempt fails."""
    case = submit(clinic, mri_images["yes"][1])
    case_id, mallory = case["case_id"], "c" * 32
    # It grants itself (a doctor id of its choosing) a seat: that much the protocol allows.
    grant_seat(orgs, clinic, case_id, mallory)
    # 1. A link in the old style, "signed" by the marketplace: the clinic ignores such links.
    forged_link = f"{clinic}/image/{case_id}?doctor={mallory}&expires=9999999999&sig=" + "0" * 128
    assert requests.get(forged_link, timeout=10).status_code == 401
    # 2. Its own P-256 key, never enrolled by the clinic.
    own_key = new_key()
    assert refusal(clinic, case_id, signed_headers(own_key, case_id, mallory)) == (
        401,
        "not_enrolled",
    )
    # 3. Replaying a genuine doctor's signed request it captured.
    doctor_key = enrol(orgs, "d" * 32)
    grant_seat(orgs, clinic, case_id, "d" * 32)
    captured = signed_headers(doctor_key, case_id, "d" * 32)
    assert refusal(clinic, case_id, captured) == (200, "served")
    assert refusal(clinic, case_id, captured) == (401, "replay")
    # ... or re-signing it for another case or as another doctor: the signature breaks.
    other_case = submit(clinic, mri_images["no"][1])["case_id"]
    grant_seat(orgs, clinic, other_case, "d" * 32)
    assert refusal(clinic, other_case, captured) == (401, "bad_signature")
    # ... or replaying it after the window.
    stale = signed_headers(doctor_key, case_id, "d" * 32, now=time.time() - 120)
    assert refusal(clinic, case_id, stale) == (401, "bad_signature")


def test_extra_seat_grants_cannot_break_the_clinics_caps(orgs, clinic, mri_images):
    case = submit(clinic, mri_images["yes"][2])
    case_id = case["case_id"]
    keys = {doctor: enrol(orgs, doctor) for doctor in ("e" * 32, "f" * 32, "0" * 32)}
    for doctor in keys:  # a marketplace widening the panel as far as it likes
        grant_seat(orgs, clinic, case_id, doctor)
    first, second, third = keys
    assert refusal(clinic, case_id, signed_headers(keys[first], case_id, first))[1] == "served"
    assert refusal(clinic, case_id, signed_headers(keys[second], case_id, second))[1] == "served"
    assert refusal(clinic, case_id, signed_headers(keys[third], case_id, third)) == (
        403,
        "viewer_cap",
    )
    # A doctor already shown the image may look again, up to the daily cap (3 here).
    assert refusal(clinic, case_id, signed_headers(keys[first], case_id, first))[1] == "served"
    assert refusal(clinic, case_id, signed_headers(keys[first], case_id, first))[1] == "served"
    assert refusal(clinic, case_id, signed_headers(keys[first], case_id, first)) == (
        403,
        "daily_cap",
    )


def test_access_ends_when_the_case_settles(orgs, clinic, mri_images):
    from infra.messaging import Envelope, new_message_id, seal
    from marketplace.messages import CLINIC, MARKETPLACE, CaseSettled

    case = submit(clinic, mri_images["no"][2])
    key = enrol(orgs, "9" * 32)
    grant_seat(orgs, clinic, case["case_id"], "9" * 32)
    settled = Envelope(
        new_message_id(), CaseSettled.TYPE, MARKETPLACE, CLINIC, time.time(),
        CaseSettled(case["case_id"], "no_tumor", datetime.now(UTC), 3, 1.0).body(),
    )  # fmt: skip
    assert post_message(clinic, seal(settled, orgs.market_key)).status_code == 200
    with pytest.raises(AccessRefused) as refused:
        fetch_image(clinic, case["case_id"], "9" * 32, key)
    assert refused.value.status == 403


def test_webcrypto_raw_signatures_and_der_both_verify():
    key = new_key()
    public = load_public_key(public_key_text(key.public_key()))
    message = request_message("a" * 32, "b" * 32, 1_700_000_000_000)
    der = key.sign(message, ec.ECDSA(hashes.SHA256()))
    raw = der_to_raw(der)
    assert len(raw) == 64 and raw_to_der(raw) == der
    from predictor.access.protocol import b64url

    for encoded in (b64url(raw), b64url(der)):
        assert verify_request(
            public, "a" * 32, "b" * 32, "1700000000000", encoded, 1_700_000_000_000
        )
    assert not verify_request(
        public, "a" * 32, "c" * 32, "1700000000000", b64url(raw), 1_700_000_000_000
    )
    assert not verify_request(
        public, "a" * 32, "b" * 32, "1700000000000", b64url(raw[:-1]), 1_700_000_000_000
    )
    assert unb64url(b64url(raw)) == raw
