"""``python -m predictor`` with the Ocean side: supervised children come back, SIGTERM stops all."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infra.net import free_port
from infra.settings import secrets_to_env, settings_to_argv
from marketplace.ocean.node import rpc_ready
from predictor.settings import PredictorSettings
from predictor.settings import parse_predictor_settings as parse_settings

ROOT = Path(__file__).resolve().parents[2]


def test_ocean_switches_round_trip_through_child_argv_and_env() -> None:
    settings = PredictorSettings(ocean=False, ocean_deploy=False, ocean_k=3).with_keys()
    assert parse_settings(settings_to_argv(settings), secrets_to_env(settings)) == settings
    from_env = parse_settings([], {"CRYPTO_DOCTOR_OCEAN": "0", "CRYPTO_DOCTOR_OCEAN_PORT": "9"})
    assert (from_env.ocean, from_env.ocean_port, from_env.ocean_deploy) == (False, 9, True)
    assert parse_settings(["--no-ocean"], {"CRYPTO_DOCTOR_OCEAN": "1"}).ocean is False
    external = parse_settings(["--ocean-rpc-url", "http://chain.example:8545"], {})
    assert external.resolved_rpc_url == "http://chain.example:8545"


def test_negative_k_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--ocean-k", "-1"], {})
    assert "ocean_k" in capsys.readouterr().err


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of the (still running) supervisor counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


class Run:
    def __init__(self, work: Path) -> None:
        self.ports = {name: free_port() for name in ("patient", "doctor", "chain", "ocean")}
        self.log = work / "supervisor.log"
        argv = [
            sys.executable, "-m", "predictor",
            "--patient-port", str(self.ports["patient"]), "--doctor-port", str(self.ports["doctor"]),
            "--chain-port", str(self.ports["chain"]), "--ocean-port", str(self.ports["ocean"]),
            "--market-db-url", f"sqlite:///{work / 'market.sqlite3'}",
            "--clinic-db-url", f"sqlite:///{work / 'clinic.sqlite3'}", "--data-dir", str(work / "party0"),
            "--ocean-data-dir", str(work / "ocean"), "--publish-every-s", "1",
        ]  # fmt: skip
        model = ROOT / "models" / "lenet.pth"
        if model.exists():
            argv += ["--model-path", str(model)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in re.findall(rf"{name} started \(pid (\d+)\)", self.text())]

    def wait(self, what: str, check, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.text()[-4000:]
            result = check()
            if result:
                return result
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.chain
def test_supervisor_restarts_ocean_children_and_stops_everything(tmp_path: Path) -> None:
    run = Run(tmp_path)
    service = f"http://127.0.0.1:{run.ports['ocean']}/"
    try:
        run.wait("the download service", lambda: _get(service))
        assert "researchers: python -m marketplace.researcher" in run.text()
        assert (tmp_path / "ocean" / "address.json").exists()
        assert json.loads((tmp_path / "ocean" / "deploy.json").read_text())["deployed"] is True

        # the download service dies: it alone comes back, on the same port
        first = run.pids("download service")[-1]
        os.kill(first, signal.SIGKILL)
        run.wait("a new download service", lambda: len(run.pids("download service")) == 2)
        run.wait("the download service again", lambda: _get(service))

        # the chain dies: it comes back on its state and the deployment runs again (a no-op)
        chain = run.pids("chain")[-1]
        os.kill(chain, signal.SIGTERM)
        run.wait("a new chain", lambda: len(run.pids("chain")) == 2)
        run.wait("a second deployment", lambda: run.text().count("Ocean contracts ready") == 2)
        assert json.loads((tmp_path / "ocean" / "deploy.json").read_text())["deployed"] is False
        assert len(run.pids("party 0")) == 1, "Ocean failures must not restart the parties"

        children = [
            *run.pids("party 0"), *run.pids("party 1"), run.pids("chain")[-1],
            run.pids("publisher")[-1], run.pids("download service")[-1],
        ]  # fmt: skip
    finally:
        run.process.send_signal(signal.SIGTERM)
        code = run.process.wait(timeout=120)
    assert code == 0
    assert not [pid for pid in children if _alive(pid)]
    assert _get(service) is None
    assert not rpc_ready(f"http://127.0.0.1:{run.ports['chain']}"), "ganache outlived the stop"
