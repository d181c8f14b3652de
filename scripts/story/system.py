"""The whole system as a user starts it, on ephemeral ports, state in one work directory."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from infra.net import free_port
from story.clients import PY, ROOT, DemoFailed


class System:
    """The whole system as a user starts it: ``python -m predictor`` with the Ocean side."""

    def __init__(self, work: Path, model: Path) -> None:
        self.work = work
        self.ports = {name: free_port() for name in ("patient", "doctor", "chain", "ocean")}
        self.db_url = f"sqlite:///{work / 'market.sqlite3'}"
        self.clinic_db_url = f"sqlite:///{work / 'party0' / 'clinic.sqlite3'}"
        self.ocean_dir = work / "ocean"
        self.patient_url = f"http://127.0.0.1:{self.ports['patient']}"
        self.doctor_url = f"http://127.0.0.1:{self.ports['doctor']}"
        self.service_url = f"http://127.0.0.1:{self.ports['ocean']}"
        self.rpc_url = f"http://127.0.0.1:{self.ports['chain']}"
        self.log_path = work / "system.log"
        self.argv = [
            PY, "-m", "predictor",
            "--patient-port", str(self.ports["patient"]), "--doctor-port", str(self.ports["doctor"]),
            "--chain-port", str(self.ports["chain"]), "--ocean-port", str(self.ports["ocean"]),
            "--market-db-url", self.db_url, "--data-dir", str(work / "party0"),
            "--clinic-db-url", self.clinic_db_url,
            "--ocean-data-dir", str(self.ocean_dir), "--model-path", str(model),
            "--publish-every-s", "2", "--passport-mint",
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise DemoFailed(f"the system exited ({self.process.returncode}); see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def ocean_env(self) -> dict[str, str]:
        return {
            "CRYPTO_DOCTOR_OCEAN_RPC_URL": self.rpc_url,
            "CRYPTO_DOCTOR_OCEAN_SERVICE_URL": self.service_url,
            "CRYPTO_DOCTOR_OCEAN_ADDRESS_FILE": str(self.ocean_dir / "address.json"),
            "CRYPTO_DOCTOR_OCEAN_DATA_DIR": str(self.work / "researcher"),
        }
