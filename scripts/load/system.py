"""The system under test: ``python -m predictor`` as users start it, and waiting for it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from infra.net import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class System:
    """The system as users start it, on ephemeral ports, state in ``work``."""

    work: Path
    model: Path
    db_url: str = ""
    rpc_url: str = ""  # external chain (the fault test's); empty: the supervisor starts one
    publish_every_s: float = 2.0
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.ports = {name: free_port() for name in ("patient", "doctor", "chain", "ocean")}
        self.db_url = self.db_url or f"sqlite:///{self.work / 'market.sqlite3'}"
        self.log_path = self.work / "system.log"

    patient_url = property(lambda self: f"http://127.0.0.1:{self.ports['patient']}")
    doctor_url = property(lambda self: f"http://127.0.0.1:{self.ports['doctor']}")
    service_url = property(lambda self: f"http://127.0.0.1:{self.ports['ocean']}")
    ocean_dir = property(lambda self: self.work / "ocean")
    clinic_db_url = property(lambda self: f"sqlite:///{self.work / 'party0' / 'clinic.sqlite3'}")

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "predictor",
            "--patient-port", str(self.ports["patient"]), "--doctor-port", str(self.ports["doctor"]),
            "--chain-port", str(self.ports["chain"]), "--ocean-port", str(self.ports["ocean"]),
            "--market-db-url", self.db_url, "--data-dir", str(self.work / "party0"),
            "--clinic-db-url", self.clinic_db_url,
            "--ocean-data-dir", str(self.ocean_dir), "--model-path", str(self.model),
            "--publish-every-s", str(self.publish_every_s), "--batch-wait-ms", "20",
            "--passport-mint",
        ]  # fmt: skip
        if self.rpc_url:
            argv += ["--ocean-rpc-url", self.rpc_url]
        return argv

    def start(self) -> None:
        env = {**os.environ, "CRYPTO_DOCTOR_ESCALATION_INTERVAL_S": "5"}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pid_of(self, name: str) -> int:
        """Latest pid of a supervised child, from the supervisor's log (``party 1``, ``chain``)."""
        pids = re.findall(rf"{name} started \(pid (\d+)\)", self.log_text())
        if not pids:
            raise RuntimeError(f"no '{name} started' line in {self.log_path}")
        return int(pids[-1])

    def alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"system exited ({self.process.returncode}); see {self.log_path}")


async def get_json(session: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict | None]:
    try:
        async with session.get(url, **kw) as reply:
            body = await reply.json(content_type=None)
            return reply.status, body
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError):
        return 0, None


async def wait_ready(system: System, deadline: float, chain_needed: bool = True) -> dict:
    """Both parties MPC-ready, download service up, Ocean contracts deployed."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            system.alive()
            status, health = await get_json(session, system.patient_url + "/healthz")
            ocean_ok = not chain_needed or (
                (system.ocean_dir / "address.json").exists()
                and (await get_json(session, system.service_url + "/"))[0] == 200
            )
            if status == 200 and health and health.get("mpc_ready") and ocean_ok:
                return health
            await asyncio.sleep(0.5)
    raise TimeoutError("system not ready before the deadline")
