"""The predictor as patients and doctors meet it: real parties, real HTTP, real database."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from PIL import Image

from marketplace import doctors
from marketplace.domain.policy import DEFAULT_POLICY
from marketplace.domain.pricing import price_bounty
from marketplace.storage import make_engine, make_sessionmaker
from models.checkpoint import load_checkpoint
from models.encrypted import Prediction, fold
from models.encrypted_unfamiliarity import plain_features
from models.preprocessing import CLASS_NAMES, Preprocessing
from predictor.access.client import fetch_image, new_key
from predictor.access.protocol import public_key_text
from tests.predictor.conftest import MAX_UPLOAD, SEED_MODEL, http, multipart
from training.synthetic.shifts import render_shift


def plaintext_prediction(image_bytes: bytes) -> Prediction:
    checkpoint = load_checkpoint(SEED_MODEL)
    image = Preprocessing(checkpoint.architecture.image_size).tensor_from_bytes(image_bytes)
    with torch.no_grad():
        logits = checkpoint.model()(image.unsqueeze(0))[0]
    return Prediction.from_logit_difference(
        float(logits[1] - logits[0]) / checkpoint.temperature, checkpoint.decision_threshold
    )


def plaintext_unfamiliar(image_bytes: bytes) -> bool:
    """The seed model's unfamiliarity flag, computed in plaintext by the model developer."""
    checkpoint = load_checkpoint(SEED_MODEL)
    assert checkpoint.detector is not None, "the seed model carries its unfamiliarity detector"
    arch = checkpoint.architecture
    image = Preprocessing(arch.image_size).tensor_from_bytes(image_bytes).unsqueeze(0)
    params = fold(checkpoint.model(), arch, checkpoint.temperature)
    features = plain_features(arch, params, image, checkpoint.detector.features)
    return bool(checkpoint.detector.flags(features)[0])


def stored_state(service) -> tuple[int, int]:
    with sqlite3.connect(service.clinic_db_path) as db:
        cases = db.execute("select count(*) from patient_cases").fetchone()[0]
    images = [p for p in (service.data_dir / "images").rglob("*") if p.is_file()]
    return cases, len(images)


def test_posted_image_gets_the_plaintext_models_prediction(service, mri_images):
    for path in (mri_images["yes"][0], mri_images["no"][0]):
        status, answer = service.post_image(path)
        assert status == 202
        assert set(answer) == {"case_id", "patient_token", "status", "status_url"}
        view = service.wait_prediction(answer["case_id"], answer["patient_token"])
        expected = plaintext_prediction(path.read_bytes())
        assert view["status"] == "open"
        assert view["prediction"]["label"] == CLASS_NAMES[expected.label]
        assert view["prediction"]["confidence"] == pytest.approx(expected.confidence, abs=1e-3)
        assert view["diagnosis"] is None


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


BAD_UPLOADS = {
    "text": (b"hello, I am not an image", 415),
    "gif": (_encoded(Image.new("RGB", (16, 16)), "GIF"), 415),
    "truncated": (_encoded(Image.effect_noise((300, 300), 50).convert("L"), "JPEG")[:3000], 400),
    "bomb": (_encoded(Image.new("1", (10_000, 10_000)), "PNG"), 413),
    "too_large": (os.urandom(MAX_UPLOAD + 1), 413),
    "empty": (b"", 400),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_uploads_get_json_errors_and_store_nothing(service, kind):
    content, expected_status = BAD_UPLOADS[kind]
    before = stored_state(service)
    body, headers = multipart("upload.bin", content)
    status, payload, _ = http("POST", service.patient_url + "/image", data=body, headers=headers)
    assert status == expected_status
    assert set(json.loads(payload)) == {"error", "detail"}
    assert stored_state(service) == before


def test_upload_without_file_field_is_a_400(service, mri_images):
    body, headers = multipart("x.jpg", mri_images["yes"][0].read_bytes(), field="image")
    status, payload, _ = http("POST", service.patient_url + "/image", data=body, headers=headers)
    assert status == 400 and json.loads(payload)["error"] == "bad_request"


def test_case_needs_its_own_patient_token(service, mri_images):
    _, answer = service.post_image(mri_images["yes"][1])
    case_url = f"{service.patient_url}/case/{answer['case_id']}"
    assert http("GET", case_url)[0] == 401
    assert http("GET", case_url, headers={"Authorization": "Bearer wrong"})[0] == 403
    unknown = f"{service.patient_url}/case/{'0' * 32}"
    assert (
        http("GET", unknown, headers={"Authorization": f"Bearer {answer['patient_token']}"})[0]
        == 404
    )


def register_doctor(service, name: str) -> str:
    """A doctor whose reputation opens every bounty tier (as the marketplace's admin CLI makes)."""
    engine = make_engine(f"sqlite:///{service.market_db_path}")
    try:
        with make_sessionmaker(engine)() as session:
            _, token = doctors.create_doctor(
                session,
                display_name=name,
                specialty="neuroradiology",
                reputation=200,
                now=datetime.now(UTC),
            )
    finally:
        engine.dispose()
    return token


def doctor_call(service, method: str, path: str, token: str) -> tuple[int, dict]:
    status, body, _ = http(
        method, service.doctor_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    return status, json.loads(body)


def eventually(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_image_goes_only_to_an_enrolled_seated_doctor_signing_with_their_own_key(
    service, mri_images
):
    path = mri_images["no"][1]
    _, answer = service.post_image(path)
    case_id = answer["case_id"]
    service.wait_prediction(case_id, answer["patient_token"])
    token = register_doctor(service, "Dr Seated")
    _, me = doctor_call(service, "GET", "/api/me", token)
    doctor_id = me["doctor_id"]
    # The clinic enrols the doctor's own key (its command, its store).
    key = new_key()
    enrolled = subprocess.run(
        [
            sys.executable, "-m", "predictor.access.enrol",
            "--clinic-db-url", f"sqlite:///{service.clinic_db_path}",
            "add", "--doctor-id", doctor_id, "--name", "Dr Seated", "--licence", "GMC 7000002",
            "--public-key", public_key_text(key.public_key()),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    # The case reaches the marketplace's pool through the clinic's case.opened message.
    assert eventually(
        lambda: any(
            c["case_id"] == case_id
            for c in doctor_call(service, "GET", "/api/pool", token)[1]["cases"]
        )
    )
    status, card = doctor_call(service, "POST", f"/api/cases/{case_id}/claim", token)
    assert status == 201, card
    # The doctor signs with their own key; the clinic waits for the seat message if needed.
    data, content_type = fetch_image(service.patient_url, case_id, doctor_id, key)
    assert data == path.read_bytes() and content_type == "image/jpeg"
    # A request without a doctor's signature (e.g. an old marketplace-signed link): 401.
    assert http("GET", f"{service.patient_url}/image/{case_id}?doctor={doctor_id}")[0] == 401
    # The marketplace's service has no image route at all.
    assert http("GET", service.doctor_url + f"/image/{case_id}")[0] == 404


def test_party_1_never_receives_image_bytes(service, mri_images):
    path = mri_images["yes"][2]
    _, answer = service.post_image(path)
    service.wait_prediction(answer["case_id"], answer["patient_token"])
    # Over the MPC control channel party 1 receives only batch sizes (the images travel as
    # secret shares inside the MPC protocol).
    messages = [json.loads(line) for line in service.control_log.read_text().splitlines()]
    assert messages and all(set(m) <= {"op", "batch"} for m in messages)
    # Party 1 keeps no store; the marketplace's (its operator's) holds no image bytes.
    image = path.read_bytes()
    database = b"".join(
        p.read_bytes() for p in service.market_db_path.parent.glob("market.sqlite3*")
    )
    assert database and image[200:264] not in database


def test_concurrent_patients_are_batched(service, mri_images):
    before = service.health()
    paths = mri_images["yes"][:4] + mri_images["no"][:4]
    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(service.post_image, paths))
    for status, answer in answers:
        assert status == 202
        service.wait_prediction(answer["case_id"], answer["patient_token"])
    after = service.health()
    assert after["images"] - before["images"] == len(paths)
    assert after["batches"] - before["batches"] < len(paths)


def test_killed_party_is_restarted_and_the_job_completes_once(service, mri_images):
    old_party0 = service.party_pid(0)
    status, answer = service.post_image(mri_images["no"][3])
    assert status == 202
    os.kill(service.party_pid(1), signal.SIGKILL)
    service.wait_ready(not_pid=old_party0)
    view = service.wait_prediction(answer["case_id"], answer["patient_token"])
    assert (
        view["prediction"]["label"]
        == CLASS_NAMES[plaintext_prediction(mri_images["no"][3].read_bytes()).label]
    )

    def fundings() -> int:
        with sqlite3.connect(service.market_db_path) as db:
            return db.execute(
                "select count(*) from ledger_transactions"
                " where case_id = ? and kind = 'fund_escrow'",
                (answer["case_id"],),
            ).fetchone()[0]

    assert eventually(lambda: fundings() >= 1)  # the case.opened message has arrived
    assert fundings() == 1


def test_long_poll_answers_as_soon_as_the_prediction_is_recorded(service, mri_images):
    status, answer = service.post_image(mri_images["yes"][3])
    assert status == 202
    code, body, _ = http(
        "GET",
        f"{service.patient_url}/case/{answer['case_id']}?wait=30",
        headers={"Authorization": f"Bearer {answer['patient_token']}"},
    )
    view = json.loads(body)
    assert code == 200 and view["status"] == "open" and view["prediction"] is not None
    bad = http("GET", f"{service.patient_url}/case/{answer['case_id']}?wait=soon",
               headers={"Authorization": f"Bearer {answer['patient_token']}"})  # fmt: skip
    assert bad[0] == 400


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _proc(pid: int, name: str) -> str:
    return (Path("/proc") / str(pid) / name).read_bytes().replace(b"\0", b" ").decode()


def test_no_child_holds_another_organisations_store_or_secret(service):
    clinic_store, market_store = str(service.clinic_db_path), str(service.market_db_path)
    forbidden = {
        "party 0": [market_store, service.market_key],
        "party 1": [
            clinic_store, market_store, str(service.data_dir), service.clinic_key,
            service.market_key,
        ],
        "marketplace": [clinic_store, str(service.data_dir), service.clinic_key],
    }  # fmt: skip
    seen = {}
    for pid in _children(service.process.pid):
        cmdline, environ = _proc(pid, "cmdline"), _proc(pid, "environ")
        role = (
            "party 0" if "--rank 0" in cmdline
            else "party 1" if "--rank 1" in cmdline
            else "marketplace" if "marketplace.service" in cmdline
            else None
        )  # fmt: skip
        if role is None:
            continue
        seen[role] = pid
        # Secrets never go on a command line, whoever they belong to.
        assert service.clinic_key not in cmdline and service.market_key not in cmdline
        for value in forbidden[role]:
            assert value not in cmdline, f"{role} is configured with {value}"
            assert value not in environ, f"{role}'s environment holds {value}"
    assert set(seen) == set(forbidden)
    # Each holds its own: the clinic its key, the marketplace its key, both only by env.
    assert service.clinic_key in _proc(seen["party 0"], "environ")
    assert service.market_key in _proc(seen["marketplace"], "environ")


def _pool_card(service, token: str, case_id: str) -> dict | None:
    cards = doctor_call(service, "GET", "/api/pool", token)[1]["cases"]
    return next((c for c in cards if c["case_id"] == case_id), None)


def test_a_far_shift_image_is_flagged_end_to_end(service, tmp_path):
    """Not a brain MRI: flagged inside the MPC program, shown to the patient, top bounty tier,
    flagged on the doctors' API."""
    far = tmp_path / "texture.png"
    Image.fromarray(render_shift("far", 2, 0, "heldout").pixels).save(far)  # dead leaves / 1/f
    assert plaintext_unfamiliar(far.read_bytes())
    token = register_doctor(service, "Dr Far")
    status, answer = service.post_image(far)
    assert status == 202
    view = service.wait_prediction(answer["case_id"], answer["patient_token"])
    assert view["status"] == "open"
    assert view["unfamiliar"] is True and view["prediction"]["unfamiliar"] is True
    assert "not sure about this kind of image" in view["unfamiliar_note"]
    card = eventually(lambda: _pool_card(service, token, answer["case_id"]))
    assert card, "the case never reached the pool"
    assert card["unfamiliar"] is True
    tiers = DEFAULT_POLICY.reputation.tiers
    assert card["bounty"] == DEFAULT_POLICY.pricing.ceiling
    assert tiers.case_tier(card["bounty"]) == len(tiers.bounty_thresholds) - 1
    with sqlite3.connect(service.market_db_path) as db:
        row = db.execute(
            "select unfamiliar, min_tier from cases where id = ?", (answer["case_id"],)
        ).fetchone()
    assert row == (1, len(tiers.bounty_thresholds) - 1)


def test_an_in_distribution_image_is_not_flagged(service, mri_images):
    token = register_doctor(service, "Dr Familiar")
    for path in (mri_images["yes"][2], mri_images["no"][2]):
        assert not plaintext_unfamiliar(path.read_bytes())
        _, answer = service.post_image(path)
        view = service.wait_prediction(answer["case_id"], answer["patient_token"])
        assert view["unfamiliar"] is False and "unfamiliar_note" not in view
        expected = plaintext_prediction(path.read_bytes())
        assert view["prediction"]["label"] == CLASS_NAMES[expected.label]
        card = eventually(lambda a=answer: _pool_card(service, token, a["case_id"]))
        assert card and card["unfamiliar"] is False
        assert card["bounty"] == price_bounty(view["prediction"]["confidence"])


def test_an_unattested_model_says_so_in_every_answer(service, mri_images):
    """The fixture runs --no-ocean --allow-unattested: no passport vouches for the model."""
    status, answer = service.post_image(mri_images["yes"][0])
    assert status == 202
    status, queued = service.case(answer["case_id"], answer["patient_token"])
    assert status == 200
    view = service.wait_prediction(answer["case_id"], answer["patient_token"])
    for shown in (queued, view) if queued["status"] == "queued" else (view,):
        assert shown["model_attested"] is False and shown["passport_id"] is None
        assert shown["model_version"] == "lenet (unattested)"
        assert "without a passport" in shown["model_note"]
