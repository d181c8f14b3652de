"""The predictor as patients and doctors meet it: real parties, real HTTP, real database."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from marketplace.image_links import sign_image_url
from models.checkpoint import load_checkpoint
from models.encrypted import Prediction
from models.preprocessing import CLASS_NAMES, Preprocessing
from tests.predictor.conftest import MAX_UPLOAD, SEED_MODEL, http, multipart


def plaintext_prediction(image_bytes: bytes) -> Prediction:
    checkpoint = load_checkpoint(SEED_MODEL)
    image = Preprocessing(checkpoint.architecture.image_size).tensor_from_bytes(image_bytes)
    with torch.no_grad():
        logits = checkpoint.model()(image.unsqueeze(0))[0]
    return Prediction.from_logit_difference(float(logits[1] - logits[0]) / checkpoint.temperature)


def stored_state(service) -> tuple[int, int]:
    with sqlite3.connect(service.db_path) as db:
        cases = db.execute("select count(*) from cases").fetchone()[0]
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


def test_image_is_served_only_by_party_0_behind_a_signed_link(service, mri_images):
    path = mri_images["no"][1]
    _, answer = service.post_image(path)
    case_id = answer["case_id"]
    link = sign_image_url(service.link_secret, service.patient_url, case_id, "7", 60, time.time())
    status, body, headers = http("GET", link)
    assert status == 200 and body == path.read_bytes()
    assert headers["Content-Type"] == "image/jpeg"
    assert http("GET", link.replace("doctor=7", "doctor=8"))[0] == 403
    expired = sign_image_url(
        service.link_secret, service.patient_url, case_id, "7", 1, time.time() - 10
    )
    assert http("GET", expired)[0] == 403
    forged = sign_image_url(
        b"not the parties' secret", service.patient_url, case_id, "7", 60, time.time()
    )
    assert http("GET", forged)[0] == 403
    # Party 1's service has no image route at all.
    assert http("GET", service.doctor_url + f"/image/{case_id}")[0] == 404


def test_party_1_never_receives_image_bytes(service, mri_images):
    path = mri_images["yes"][2]
    _, answer = service.post_image(path)
    service.wait_prediction(answer["case_id"], answer["patient_token"])
    # Over the MPC control channel party 1 receives only batch sizes (the images travel as
    # secret shares inside the MPC protocol).
    messages = [json.loads(line) for line in service.control_log.read_text().splitlines()]
    assert messages and all(set(m) <= {"op", "batch"} for m in messages)
    # The shared database (the only other thing party 1 reads) holds no image bytes.
    image = path.read_bytes()
    database = b"".join(p.read_bytes() for p in service.db_path.parent.glob("cases.sqlite3*"))
    assert image[200:264] not in database


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
    with sqlite3.connect(service.db_path) as db:
        fundings = db.execute(
            "select count(*) from ledger_transactions where case_id = ? and kind = 'fund_escrow'",
            (answer["case_id"],),
        ).fetchone()[0]
    assert fundings == 1


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
