"""The model owner switches the served checkpoint without a restart (predictor.switch_model):
the next batches run on it, no queued case is dropped or run twice, a checkpoint that fails
party 1's checks is not served, and a restarted party 1 comes back with the choice."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from models.encrypted import Prediction
from models.preprocessing import CLASS_NAMES, Preprocessing
from predictor.switch_model import main as switch_model
from tests.predictor.conftest import SEED_MODEL, Service, running_service


@pytest.fixture(scope="module")
def switching(tmp_path_factory) -> Iterator[Service]:
    # heartbeats every second: party 1 reads the serving file at each
    yield from running_service(tmp_path_factory.mktemp("switching"), "--heartbeat-s", "1")


def serving_file(service: Service) -> Path:
    return service.data_dir.parent / "party1" / "serving.json"


def softer_seed(path: Path) -> Path:
    """The seed model at twice its temperature: the same labels, other confidences, another
    file (as a fine-tuned candidate would be)."""
    seed = load_checkpoint(SEED_MODEL)
    save_checkpoint(
        path, seed.model(), seed.architecture, 2.0 * seed.temperature,
        detector=seed.detector, decision_threshold=seed.decision_threshold,
    )  # fmt: skip
    return path


def plaintext(checkpoint_path: Path, image: Path) -> Prediction:
    checkpoint = load_checkpoint(checkpoint_path)
    tensor = Preprocessing(checkpoint.architecture.image_size).tensor_from_path(image)
    with torch.no_grad():
        logits = checkpoint.model()(tensor.unsqueeze(0))[0]
    return Prediction.from_logit_difference(
        float(logits[1] - logits[0]) / checkpoint.temperature, checkpoint.decision_threshold
    )


def served_by(service: Service) -> dict[str, str]:
    with sqlite3.connect(service.clinic_db_path) as db:
        return dict(db.execute("select id, model_sha256 from patient_cases").fetchall())


def wait_for_log(service: Service, text: str, count: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while service.log().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{service.log()}"
        time.sleep(0.2)


def test_the_owner_switches_the_model_and_no_case_is_dropped(switching, mri_images, tmp_path):
    service, images = switching, mri_images["yes"][:4] + mri_images["no"][:4]
    status, first = service.post_image(images[0])
    assert status == 202
    service.wait_prediction(first["case_id"], first["patient_token"])
    assert served_by(service)[first["case_id"]] == file_sha256(SEED_MODEL)

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    assert switch_model([str(broken), "--serving-file", str(serving_file(service))]) == 2
    assert not serving_file(service).exists()  # refused before anything was written

    candidate = softer_seed(tmp_path / "candidate.pth")
    assert switch_model([str(candidate), "--serving-file", str(serving_file(service))]) == 0
    posted = [service.post_image(image)[1] for image in images]  # queued around the switch
    for answer in posted:
        service.wait_prediction(answer["case_id"], answer["patient_token"])
    wait_for_log(service, "now serving lenet from")
    status, after = service.post_image(images[1])
    view = service.wait_prediction(after["case_id"], after["patient_token"])
    expected = plaintext(candidate, images[1])
    assert view["prediction"]["label"] == CLASS_NAMES[expected.label]
    assert view["prediction"]["confidence"] == pytest.approx(expected.confidence, abs=1e-3)
    served = served_by(service)
    assert served[after["case_id"]] == file_sha256(candidate)
    # each case ran once, on one model or the other
    assert {served[a["case_id"]] for a in posted} <= {
        file_sha256(SEED_MODEL),
        file_sha256(candidate),
    }
    assert service.log().count("now serving lenet from") == 1

    # a checkpoint party 1 cannot load: refused in its log, the candidate still served
    serving_file(service).write_text(
        serving_file(service).read_text().replace(str(candidate.resolve()), str(broken))
    )
    wait_for_log(service, f"not switching to {broken}")
    status, still = service.post_image(images[2])
    service.wait_prediction(still["case_id"], still["patient_token"])
    assert served_by(service)[still["case_id"]] == file_sha256(candidate)
    assert service.log().count(f"not switching to {broken}") == 1  # tried once, not per beat

    # a restarted party 1 starts with the owner's choice, not --model-path
    assert switch_model([str(candidate), "--serving-file", str(serving_file(service))]) == 0
    old_party0 = service.party_pid(0)
    os.kill(service.party_pid(1), signal.SIGKILL)
    service.wait_ready(not_pid=old_party0)
    status, restarted = service.post_image(images[3])
    service.wait_prediction(restarted["case_id"], restarted["patient_token"])
    assert served_by(service)[restarted["case_id"]] == file_sha256(candidate)
    assert "as " + str(serving_file(service)) + " asks" in service.log()
