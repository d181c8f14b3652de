"""Fixtures that start the real predictor: a supervisor with two MPC party processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.messaging import generate_key
from infra.net import free_port
from training.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
SEED_MODEL = ROOT / "models" / "lenet.pth"
MAX_UPLOAD = 1_000_000


@pytest.fixture(scope="session")
def mri_images(tmp_path_factory) -> dict[str, list[Path]]:
    """A few generated slices (deterministic), by class folder."""
    root = generate_dataset(tmp_path_factory.mktemp("mri"), seed=7, train=2, eval=8)
    return {label: sorted((root / "eval" / label).iterdir()) for label in ("yes", "no")}


def http(method: str, url: str, *, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def multipart(filename: str, content: bytes, field: str = "file") -> tuple[bytes, dict]:
    boundary = "crypto-doctor-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@dataclass
class Service:
    process: subprocess.Popen
    log_path: Path
    patient_url: str
    doctor_url: str
    clinic_db_path: Path
    market_db_path: Path
    data_dir: Path
    control_log: Path
    #: The marketplace's signing key (the test plays the marketplace when it signs links).
    market_key: str
    clinic_key: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def party_pid(self, rank: int) -> int:
        pids = re.findall(rf"party {rank} started \(pid (\d+)\)", self.log())
        return int(pids[-1])

    def health(self) -> dict | None:
        try:
            status, body, _ = http("GET", self.patient_url + "/healthz")
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def wait_ready(self, timeout: float = 180, not_pid: int | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            health = self.health()
            if health and health["mpc_ready"] and health["pid"] != not_pid:
                try:
                    if http("GET", self.doctor_url + "/healthz")[0] == 200:
                        return health
                except OSError:
                    pass  # the marketplace is still starting
            time.sleep(0.2)
        raise AssertionError("predictor did not become ready:\n" + self.log())

    def post_image(self, path: Path) -> tuple[int, dict]:
        body, headers = multipart(path.name, path.read_bytes())
        status, payload, _ = http("POST", self.patient_url + "/image", data=body, headers=headers)
        return status, json.loads(payload)

    def case(self, case_id: str, token: str) -> tuple[int, dict]:
        status, payload, _ = http(
            "GET",
            f"{self.patient_url}/case/{case_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        return status, json.loads(payload)

    def wait_prediction(self, case_id: str, token: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, view = self.case(case_id, token)
            assert status == 200, view
            if view["prediction"] is not None:
                return view
            time.sleep(0.1)
        raise AssertionError(f"no prediction for {case_id}:\n" + self.log())


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    yield from running_service(tmp_path_factory.mktemp("predictor"))


def running_service(work: Path, *extra: str) -> Iterator[Service]:
    """The supervised predictor on ephemeral ports, its stores under ``work``, until the
    caller is done (then SIGTERM); ``extra``: more flags."""
    assert SEED_MODEL.exists(), "the seed model models/lenet.pth is part of the repository"
    svc = Service(
        process=None,  # type: ignore[arg-type]
        log_path=work / "predictor.log",
        patient_url="",
        doctor_url="",
        clinic_db_path=work / "party0" / "clinic.sqlite3",
        market_db_path=work / "marketplace" / "market.sqlite3",
        data_dir=work / "party0",
        control_log=work / "party1-control.jsonl",
        market_key=generate_key(),
        clinic_key=generate_key(),
    )
    patient_port, doctor_port = free_port(), free_port()
    svc.patient_url = f"http://127.0.0.1:{patient_port}"
    svc.doctor_url = f"http://127.0.0.1:{doctor_port}"
    argv = [
        sys.executable, "-m", "predictor",
        "--patient-port", str(patient_port), "--doctor-port", str(doctor_port),
        "--clinic-db-url", f"sqlite:///{svc.clinic_db_path}",
        "--market-db-url", f"sqlite:///{svc.market_db_path}",
        "--data-dir", str(svc.data_dir),
        "--model-path", str(SEED_MODEL),
        "--serving-file", str(work / "party1" / "serving.json"),
        "--control-log", str(svc.control_log), "--batch-wait-ms", "50",
        "--max-upload-bytes", str(MAX_UPLOAD),
        "--no-ocean",  # these tests need no chain
        "--allow-unattested",  # so no passport either: every answer says so
        *extra,
    ]  # fmt: skip
    with open(svc.log_path, "wb") as log:
        env = {
            **os.environ,
            "CRYPTO_DOCTOR_MARKET_KEY": svc.market_key,
            "CRYPTO_DOCTOR_CLINIC_KEY": svc.clinic_key,
        }
        svc.process = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.process.send_signal(signal.SIGTERM)
        try:
            svc.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            svc.process.kill()
