"""The patient app in-process: real HTTP, real database and image store, a real queue.

The queue here is an honest in-process :class:`InferenceQueue`: a :class:`BatchQueue` drained
by a thread that runs the plaintext seed model and records predictions through the same
``cases.record_prediction`` the MPC engine uses. The encrypted path is tested end to end in
``test_service.py``; these tests pin the patient API and batching without MPC processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra.messaging import generate_key, public_key
from marketplace.storage import make_engine, make_sessionmaker
from models.preprocessing import CLASS_NAMES
from predictor.clinic.store import migrate_clinic
from predictor.images import ImageStore
from predictor.inference_queue import BatchQueue
from predictor.metrics import PatientSideMetrics
from predictor.outcomes import OutcomeWaiters
from predictor.patient_api import create_patient_app
from predictor.settings import PredictorSettings
from tests.marketplace.servers import serve
from tests.predictor.conftest import multipart
from tests.predictor.plaintext import PlaintextQueue


@pytest.fixture
def patient_app(tmp_path: Path, mri_images) -> Iterator[tuple[str, PlaintextQueue]]:
    db_url = f"sqlite:///{tmp_path / 'clinic.sqlite3'}"
    migrate_clinic(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    images = ImageStore(tmp_path / "party0")
    waiters = OutcomeWaiters()
    queue = PlaintextQueue(sessions, images, waiters)
    settings = PredictorSettings(
        clinic_db_url=db_url,
        max_upload_bytes=1_000_000,
        clinic_key=generate_key(),
        market_public_key=public_key(generate_key()),
        marketplace_url="http://127.0.0.1:9",  # nobody: case.opened messages wait in the outbox
    )
    app = create_patient_app(settings, sessions, images, queue, waiters, PatientSideMetrics())
    try:
        with serve(app) as url:
            yield url, queue
    finally:
        queue.close()
        engine.dispose()


def post(url: str, path: Path) -> dict:
    body, headers = multipart(path.name, path.read_bytes())
    reply = requests.post(f"{url}/image", data=body, headers=headers, timeout=10)
    assert reply.status_code == 202, reply.text
    return reply.json()


def test_upload_is_queued_and_long_poll_answers_when_the_prediction_lands(patient_app, mri_images):
    url, queue = patient_app
    queue.gate.clear()
    submitted = post(url, mri_images["yes"][0])
    auth = {"Authorization": f"Bearer {submitted['patient_token']}"}
    first = requests.get(f"{url}/case/{submitted['case_id']}", headers=auth, timeout=10).json()
    assert first["status"] == "queued" and first["prediction"] is None
    threading.Timer(0.3, queue.gate.set).start()
    started = time.monotonic()
    view = requests.get(
        f"{url}/case/{submitted['case_id']}?wait=20", headers=auth, timeout=30
    ).json()
    assert view["status"] == "open"
    assert view["prediction"]["label"] in CLASS_NAMES
    assert time.monotonic() - started < 15  # woken by the outcome, not by the 20 s wait


def test_cases_arriving_together_share_a_batch(patient_app, mri_images):
    url, queue = patient_app
    queue.gate.clear()
    paths = mri_images["yes"][:3] + mri_images["no"][:3]
    ids = {post(url, path)["case_id"] for path in paths}
    queue.gate.set()
    deadline = time.monotonic() + 20
    while sum(len(b) for b in queue.batches) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {c for b in queue.batches for c in b} == ids
    assert max(len(b) for b in queue.batches) > 1


def test_wrong_token_missing_token_and_unknown_case(patient_app, mri_images):
    url, _ = patient_app
    submitted = post(url, mri_images["no"][0])
    case_url = f"{url}/case/{submitted['case_id']}"
    assert requests.get(case_url, timeout=10).status_code == 401
    wrong = requests.get(case_url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert (wrong.status_code, wrong.json()["error"]) == (403, "wrong_patient_token")
    unknown = requests.get(
        f"{url}/case/{'0' * 32}",
        headers={"Authorization": f"Bearer {submitted['patient_token']}"},
        timeout=10,
    )
    assert (unknown.status_code, unknown.json()["error"]) == (404, "case_not_found")


def test_healthz_and_metrics_report_the_queue(patient_app, mri_images):
    url, queue = patient_app
    queue.gate.clear()
    post(url, mri_images["yes"][1])
    health = requests.get(f"{url}/healthz", timeout=10).json()
    assert health["queued"] == 1 and health["mpc_ready"] is True
    metrics = requests.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "crypto_doctor_queue_depth 1.0" in metrics.text
    assert "crypto_doctor_cases_submitted_total 1.0" in metrics.text


def test_batch_queue_deduplicates_and_batches():
    jobs = BatchQueue()
    assert jobs.submit("a") and jobs.submit("b") and not jobs.submit("a")
    assert jobs.pending() == 2
    assert jobs.next_batch(max_batch=8, wait_s=0.01, idle_s=0.01) == ["a", "b"]
    assert jobs.next_batch(max_batch=8, wait_s=0.01, idle_s=0.01) == []  # idle: heartbeat
    jobs.done(["a", "b"])
    assert jobs.pending() == 0 and jobs.submit("a")
    for case_id in "cdefghij":
        jobs.submit(case_id)
    assert jobs.next_batch(max_batch=4, wait_s=0.01, idle_s=0.01) == list("acde")
    jobs.close()
    assert jobs.next_batch(max_batch=8, wait_s=0.01, idle_s=0.01) == list("fghij")
    assert jobs.next_batch(max_batch=8, wait_s=0.01, idle_s=0.01) is None


def test_every_route_is_in_the_openapi_document(patient_app):
    from infra.openapi import load_spec, undocumented_routes
    from predictor.patient_api import OPENAPI

    url, queue = patient_app
    settings = PredictorSettings(
        clinic_key=generate_key(), market_public_key=public_key(generate_key())
    )
    app = create_patient_app(settings, None, None, queue, OutcomeWaiters(), PatientSideMetrics())
    assert undocumented_routes(app, load_spec(OPENAPI)) == set()
    served = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "/case/{case_id}" in served["paths"]


def test_the_patient_token_is_accepted_only_in_the_authorization_header(patient_app, mri_images):
    url, _ = patient_app
    submitted = post(url, mri_images["no"][2])
    in_query = requests.get(
        f"{url}/case/{submitted['case_id']}?token={submitted['patient_token']}", timeout=10
    )
    assert in_query.status_code == 401


def test_the_patients_teaching_consent_is_asked_at_upload_and_shown(
    patient_app, mri_images, tmp_path
):
    url, _ = patient_app
    image = mri_images["no"][0]

    def upload(*consent: str) -> requests.Response:
        fields = {"consent": consent[0]} if consent else None
        files = {"file": (image.name, image.read_bytes(), "image/jpeg")}
        return requests.post(f"{url}/image", files=files, data=fields, timeout=10)

    def shown(reply: requests.Response) -> bool:
        assert reply.status_code == 202, reply.text
        answer = reply.json()
        auth = {"Authorization": f"Bearer {answer['patient_token']}"}
        return requests.get(f"{url}/case/{answer['case_id']}", headers=auth, timeout=10).json()[
            "teaching_consent"
        ]

    assert shown(upload()) is False  # not asked: no
    assert shown(upload("yes")) is True
    assert shown(upload("No")) is False
    stored = sorted((tmp_path / "party0" / "images").glob("*.*"))
    refused = upload("maybe")
    assert refused.status_code == 400 and refused.json()["error"] == "bad_consent"
    assert sorted((tmp_path / "party0" / "images").glob("*.*")) == stored  # nothing stored
