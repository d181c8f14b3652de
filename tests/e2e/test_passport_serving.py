"""Party 1 serves only a checkpoint its passport on chain attests (real ganache, real processes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.net import free_port
from marketplace.ocean.chain import connect, wallet
from marketplace.ocean.deploy import deploy_contracts
from marketplace.ocean.node import GanacheNode
from marketplace.ocean.settings import dev_key
from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from models.passport.registry import Attestation, PassportSettings, mint
from predictor.model_passport import EXIT_UNATTESTED, announced_passport
from predictor.settings import PredictorSettings

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "models" / "lenet.pth"


@dataclass(frozen=True)
class Chain:
    url: str
    address_file: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("chain")
    node = GanacheNode(db_path=root / "db")
    node.start()
    try:
        deploy_contracts(connect(node.url), wallet(dev_key(0)), root / "address.json")
        yield Chain(node.url, root / "address.json")
    finally:
        node.stop()


def attested_copy(chain: Chain, work: Path) -> tuple[Path, Path, Attestation]:
    """A copy of the seed model with its passport minted; the Ocean folder party 1 reads."""
    ocean = work / "ocean"
    ocean.mkdir(parents=True)
    shutil.copyfile(chain.address_file, ocean / "address.json")
    model = work / "model.pth"
    shutil.copyfile(SEED, model)
    provenance = json.loads((ROOT / "models" / "lenet.provenance.json").read_text())
    provenance["checkpoint_sha256"] = file_sha256(model)
    settings = PassportSettings(
        rpc_url=chain.url, address_file=ocean / "address.json", documents_dir=ocean / "passports"
    )
    result = mint(
        settings.chain(),
        settings.documents(),
        settings.wallet(),
        model,
        provenance,
        lineage="serving-" + work.name[-8:],
    )
    return model, ocean, result.attestation


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_party_1_refuses_a_checkpoint_with_one_byte_changed(chain: Chain, tmp_path: Path) -> None:
    model, ocean, attestation = attested_copy(chain, tmp_path)
    settings = PredictorSettings(
        model_path=model, ocean_rpc_url=chain.url, ocean_data_dir=ocean, passport_wait_s=0
    )
    announced = announced_passport(settings)
    assert announced == {
        "model_version": attestation.model_version,
        "passport_id": attestation.passport_id,
        "attested": True,
    }

    flip_one_byte(model)
    party1 = subprocess.run(
        [sys.executable, "-m", "predictor", "--rank", "1", "--model-path", str(model),
         "--ocean-rpc-url", chain.url, "--ocean-data-dir", str(ocean), "--passport-wait-s", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert party1.returncode == EXIT_UNATTESTED, party1.stdout + party1.stderr
    errors = [line for line in party1.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, party1.stdout
    assert "refusing to serve" in errors[0] and "matches no version" in errors[0]
    assert "python -m models.passport mint" in errors[0] and "--allow-unattested" in errors[0]


def test_the_supervisor_does_not_restart_a_refusing_party_1(chain: Chain, tmp_path: Path) -> None:
    model, ocean, _ = attested_copy(chain, tmp_path)
    flip_one_byte(model)
    run = subprocess.run(
        [sys.executable, "-m", "predictor", "--no-ocean",
         "--ocean-rpc-url", chain.url, "--ocean-data-dir", str(ocean),
         "--model-path", str(model),
         "--patient-port", str(free_port()), "--doctor-port", str(free_port()),
         "--clinic-db-url", f"sqlite:///{tmp_path / 'clinic.sqlite3'}",
         "--market-db-url", f"sqlite:///{tmp_path / 'market.sqlite3'}",
         "--data-dir", str(tmp_path / "party0")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == EXIT_UNATTESTED, log
    assert len(re.findall(r"party 1 started", log)) == 1, log
    assert "not restarting" in log


def _get(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


@pytest.mark.slow  # a whole two-party run
def test_get_case_names_the_attested_version_and_its_passport(chain: Chain, tmp_path: Path) -> None:
    model, ocean, attestation = attested_copy(chain, tmp_path)
    serving = tmp_path / "party1" / "serving.json"
    patient = free_port()
    base = f"http://127.0.0.1:{patient}"
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "predictor", "--no-ocean",
             "--ocean-rpc-url", chain.url, "--ocean-data-dir", str(ocean),
             "--model-path", str(model),
             "--patient-port", str(patient), "--doctor-port", str(free_port()),
             "--clinic-db-url", f"sqlite:///{tmp_path / 'clinic.sqlite3'}",
             "--market-db-url", f"sqlite:///{tmp_path / 'market.sqlite3'}",
             "--data-dir", str(tmp_path / "party0"), "--batch-wait-ms", "20",
             "--serving-file", str(serving), "--heartbeat-s", "1"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        health: dict = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                health = _get(base + "/healthz")
            except OSError:
                health = {}
            if health.get("mpc_ready"):
                break
            time.sleep(0.5)
        assert health.get("mpc_ready"), log_path.read_text()
        assert health["model"]["passport_id"] == attestation.passport_id
        image = next((ROOT / "samples").glob("*.jpg"))

        def predicted() -> dict:
            upload = subprocess.run(
                ["curl", "-s", "-X", "POST", "-F", f"file=@{image}", base + "/image"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            answer = json.loads(upload.stdout)
            view: dict = {}
            while time.monotonic() < deadline:
                view = _get(f"{base}/case/{answer['case_id']}?wait=5", answer["patient_token"])
                if view["prediction"] is not None:
                    break
            assert view["prediction"] is not None, log_path.read_text()
            return view

        view = predicted()
        assert view["passport_id"] == attestation.passport_id
        assert view["model_version"] == attestation.model_version
        assert view["model_attested"] is True and "model_note" not in view

        # the owner's next version: not served before its passport says so, then switched to
        candidate = tmp_path / "candidate.pth"
        served = load_checkpoint(model)  # another file: the same network, softer confidences
        save_checkpoint(candidate, served.model(), served.architecture, 2 * served.temperature,
                        detector=served.detector,
                        decision_threshold=served.decision_threshold)  # fmt: skip
        switch = [sys.executable, "-m", "predictor.switch_model", str(candidate),
                  "--serving-file", str(serving)]  # fmt: skip
        subprocess.run(switch, cwd=ROOT, check=True, capture_output=True, timeout=120)
        while "not switching to" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert "matches no version" in log_path.read_text()
        assert predicted()["model_version"] == attestation.model_version  # still the first
        provenance = json.loads((ROOT / "models" / "lenet.provenance.json").read_text())
        provenance["checkpoint_sha256"] = file_sha256(candidate)
        passports = PassportSettings(rpc_url=chain.url, address_file=ocean / "address.json",
                                     documents_dir=ocean / "passports")  # fmt: skip
        second = mint(passports.chain(), passports.documents(), passports.wallet(), candidate,
                      provenance, lineage=attestation.lineage).attestation  # fmt: skip
        assert second.version == 2
        subprocess.run(switch, cwd=ROOT, check=True, capture_output=True, timeout=120)
        while "now serving" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        view = predicted()
        assert view["model_version"] == second.model_version != attestation.model_version
        assert view["passport_id"] == attestation.passport_id and view["model_attested"] is True
    finally:
        process.terminate()
        process.wait(timeout=90)
