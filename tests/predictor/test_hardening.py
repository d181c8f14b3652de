"""What a security review and a newcomer's first hour found, as the running system shows it.

Real supervisor, real parties, real HTTP: headers and banner, an over-long header's answer,
503 while the parties restart, orphans of an interrupted upload, one ``ready:`` line, a quiet
log and a clean shutdown.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPConnection
from urllib.parse import urlsplit

import pytest

from infra.messaging import generate_key
from infra.net import free_port
from marketplace.storage import make_engine, make_sessionmaker
from predictor.clinic import cases
from tests.predictor.conftest import ROOT, SEED_MODEL, http, multipart


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _headers(headers: dict) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _raw_exchange(port: int, request: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


# -- headers, banner, the over-long header ------------------------------------------------


def test_patient_api_sends_nosniff_and_no_store_and_no_server_banner(service):
    body, form = multipart("note.txt", b"not an image")
    answers = [
        http("GET", service.patient_url + "/healthz"),
        http("GET", service.patient_url + f"/case/{'0' * 32}"),  # 401
        http("GET", service.patient_url + "/no-such-page"),  # 404
        http("POST", service.patient_url + "/image", data=body, headers=form),  # 415
    ]
    assert [status for status, _, _ in answers] == [200, 401, 404, 415]
    for _, _, headers in answers:
        seen = _headers(headers)
        assert seen.get("x-content-type-options") == "nosniff"
        assert "no-store" in seen.get("cache-control", "")
        assert "server" not in seen, seen["server"]


def test_an_over_long_header_is_refused_without_echoing_the_request(service):
    token = "tok-" + secrets.token_urlsafe(24)
    request = (
        f"GET /case/{'0' * 32} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}{'x' * 9000}\r\n\r\n"
    ).encode()
    answer = _raw_exchange(_port(service.patient_url), request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", head), answer[:200]
    assert token.encode() not in answer
    assert b"Bearer" not in answer
    assert b"\r\nserver:" not in head.lower()
    assert json.loads(body)["error"] == "bad_request"
    # Nor does the clinic's log keep it.
    assert token not in service.log()


# -- while the parties restart ------------------------------------------------------------


def test_patients_get_503_with_retry_after_while_the_parties_restart(service, mri_images):
    old_party0 = service.party_pid(0)
    body, form = multipart("scan.jpg", mri_images["yes"][0].read_bytes())
    calls = {
        "GET": lambda: http("GET", service.patient_url + "/healthz"),
        "POST": lambda: http("POST", service.patient_url + "/image", data=body, headers=form),
    }
    normal = {"GET": 200, "POST": 202}
    os.kill(old_party0, signal.SIGKILL)
    unavailable = 0
    deadline = time.monotonic() + 180
    while True:
        assert time.monotonic() < deadline, "party 0 did not come back:\n" + service.log()
        answered = {}
        for method, send in calls.items():
            try:
                status, payload, headers = send()
            except urllib.error.URLError as exc:
                pytest.fail(f"{method} during the restart was not answered: {exc.reason}")
            answered[method] = (status, payload)
            if status == 503:
                unavailable += 1
                assert int(_headers(headers)["retry-after"]) > 0
                assert json.loads(payload)["error"] == "restarting"
            else:
                assert status == normal[method], payload
        status, payload = answered["GET"]
        if status == 200 and json.loads(payload)["pid"] != old_party0:
            break
        time.sleep(0.05)
    assert unavailable > 0, "no request met the restart"
    service.wait_ready(not_pid=old_party0)


# -- orphans of an upload cut short --------------------------------------------------------


def test_what_an_upload_cut_short_by_a_kill_left_is_gone_after_the_restart(service, mri_images):
    # Party 0 killed between committing a case row and renaming its staged image: the row
    # was never acknowledged to the patient (the 202 goes out after the rename).
    incoming = service.data_dir / "images" / "incoming"
    staged = incoming / (secrets.token_hex(16) + ".jpg")
    shutil.copyfile(mri_images["no"][0], staged)
    engine = make_engine(f"sqlite:///{service.clinic_db_path}")
    try:
        with make_sessionmaker(engine)() as session:
            orphan = cases.create_case(session, patient_token_hash="ab" * 32, now=datetime.now(UTC))
    finally:
        engine.dispose()
    _, acknowledged = service.post_image(mri_images["no"][1])

    old_party0 = service.party_pid(0)
    os.kill(old_party0, signal.SIGKILL)
    service.wait_ready(not_pid=old_party0)

    with sqlite3.connect(service.clinic_db_path) as db:
        assert db.execute("select * from patient_cases where id = ?", (orphan,)).fetchall() == []
        failed = db.execute(
            "select count(*) from patient_cases where failure_reason like '%missing%'"
        ).fetchone()[0]
    assert failed == 0
    assert list(incoming.iterdir()) == []
    # What the patient was told about is kept, and runs.
    view = service.wait_prediction(acknowledged["case_id"], acknowledged["patient_token"])
    assert view["status"] in ("open", "under_review")


# -- a quiet log ---------------------------------------------------------------------------


def test_no_access_log_line_per_request_by_default(service):
    marker = "probe-" + secrets.token_hex(8)
    connection = HTTPConnection("127.0.0.1", _port(service.patient_url), timeout=30)
    try:
        # Two requests on one connection: the first is logged, if at all, before the second
        # is answered.
        for path in (f"/healthz?{marker}", "/healthz"):
            connection.request("GET", path)
            reply = connection.getresponse()
            reply.read()
            assert reply.status == 200
    finally:
        connection.close()
    assert marker not in service.log()


def test_party_0_starts_without_alembic_chatter(service):
    lines = service.log().splitlines()
    assert any(line.startswith("[party 0]") for line in lines)
    assert not [line for line in lines if line.startswith("[party 0]") and "alembic" in line]


# -- ready line, access log on request, clean shutdown: a run of its own -------------------


@dataclass(frozen=True)
class StoppedRun:
    log: str
    returncode: int
    #: What each service answered right after the ready line was seen (no retry).
    at_ready: dict[str, tuple[int, dict]]
    marker: str


def _answer(url: str) -> tuple[int, dict]:
    try:
        status, body, _ = http("GET", url)
    except urllib.error.URLError:
        return 0, {}
    return status, json.loads(body)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> StoppedRun:
    """A supervisor run with ``--access-log``, from start to SIGTERM and exit."""
    work = tmp_path_factory.mktemp("run")
    patient, doctor = free_port(), free_port()
    argv = [
        sys.executable, "-m", "predictor", "--no-ocean", "--allow-unattested", "--access-log",
        "--patient-port", str(patient), "--doctor-port", str(doctor),
        "--clinic-db-url", f"sqlite:///{work / 'clinic.sqlite3'}",
        "--market-db-url", f"sqlite:///{work / 'market.sqlite3'}",
        "--data-dir", str(work / "party0"), "--model-path", str(SEED_MODEL),
    ]  # fmt: skip
    env = {
        **os.environ,
        "CRYPTO_DOCTOR_CLINIC_KEY": generate_key(),
        "CRYPTO_DOCTOR_MARKET_KEY": generate_key(),
    }
    log_path = work / "supervisor.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)

    def text() -> str:
        return log_path.read_text(errors="replace")

    def wait_for(what: str, check, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert process.poll() is None, text()
            assert time.monotonic() < deadline, f"no {what}:\n{text()}"
            time.sleep(0.1)

    marker = "probe-" + secrets.token_hex(8)
    try:
        wait_for("ready line", lambda: "ready:" in text())
        at_ready = {
            "patients": _answer(f"http://127.0.0.1:{patient}/healthz"),
            "doctors": _answer(f"http://127.0.0.1:{doctor}/healthz"),
        }
        http("GET", f"http://127.0.0.1:{patient}/healthz?{marker}")
        wait_for("access log line", lambda: marker in text())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    return StoppedRun(text(), returncode, at_ready, marker)


def test_one_ready_line_once_every_service_answers(stopped_run):
    lines = stopped_run.log.splitlines()
    ready = [i for i, line in enumerate(lines) if "ready:" in line]
    assert len(ready) == 1, stopped_run.log
    status, health = stopped_run.at_ready["patients"]
    assert status == 200 and health["mpc_ready"] is True
    assert stopped_run.at_ready["doctors"][0] == 200

    def first(*texts: str) -> int:
        return next(i for i, line in enumerate(lines) if all(t in line for t in texts))

    # The hints come with it, after party 0 listens, not before.
    assert (
        first("[party 0] ") <= first("[party 0] ", "listening on") < ready[0] < first("patients:")
    )


def test_the_access_log_setting_turns_request_lines_on(stopped_run):
    assert re.search(rf'"GET /healthz\?{stopped_run.marker} HTTP/1\.1" 200', stopped_run.log)


def test_shutdown_is_clean_and_says_nothing_alarming(stopped_run):
    assert stopped_run.returncode == 0
    assert stopped_run.log.rstrip().endswith("all services stopped")
    assert "terminate called" not in stopped_run.log
    assert "Traceback" not in stopped_run.log


def test_marketplace_store_url_in_hints_has_no_password():
    from predictor.supervisor import shown_url

    shown = shown_url("postgresql://market:s3cr3t@db.example/market")
    assert "s3cr3t" not in shown and shown.startswith("postgresql://market:")
    assert shown_url("sqlite:///var/m.sqlite3") == "sqlite:///var/m.sqlite3"
