"""``python -m predictor``: start everything on this machine and keep it alive.

- The two MPC parties, each a separate OS process (``python -m predictor --rank N``)
  rendezvousing over torch.distributed. If either dies, the supervisor stops the other and
  starts both again on a fresh rendezvous port: queued cases are in the database and run again.
- The Ocean side (unless ``--no-ocean``): the local ganache chain (only when no external RPC URL
  is configured), the idempotent contract deployment, the publisher loop and the research-data
  download service. Each is restarted on its own if it dies; after a chain restart the
  deployment runs again (a no-op when the contracts are still there).

SIGTERM/SIGINT stop every child (publisher and services first, the chain last).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from marketplace.storage import migrate
from models.mpc import free_port
from predictor.settings import PredictorSettings, settings_to_argv

log = logging.getLogger("predictor.launcher")

POLL_S = 0.2
MAX_RESTARTS_PER_MINUTE = 5
#: A dead Ocean child is started again at most this often (it never gives up: a chain may
#: be down for long, the parties keep serving patients meanwhile).
OCEAN_RESTART_DELAY_S = 2.0
DEPLOY_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "deploy_ocean.py"


def stop_process(child: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@dataclass
class OceanChild:
    """One supervised process of the Ocean side and when it may next be (re)started."""

    name: str
    argv: list[str]
    #: Where the child's stdout goes (None: the supervisor's own stdout).
    stdout_path: Path | None = None
    process: subprocess.Popen | None = None
    not_before: float = 0.0
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        # Own process group: a child's own children (ganache under the chain wrapper) can be
        # cleaned up with it, even when the child itself was killed without warning.
        if self.stdout_path is None:
            self.process = subprocess.Popen(self.argv, start_new_session=True)
        else:
            self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.stdout_path, "wb") as out:
                self.process = subprocess.Popen(self.argv, stdout=out, start_new_session=True)
        self.starts += 1
        self.not_before = time.monotonic() + OCEAN_RESTART_DELAY_S
        log.info("%s started (pid %d)", self.name, self.process.pid)

    def reap(self) -> int | None:
        """Forget a dead child; SIGTERM whatever is left of its process group."""
        code = self.process.returncode if self.process is not None else None
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGTERM)
        self.process = None
        return code

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            _signal_group(self.process.pid, signal.SIGKILL)
        self.process = None


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class OceanSide:
    """Chain -> deployment -> publisher + download service, as a small state machine."""

    settings: PredictorSettings
    children: dict[str, OceanChild] = field(default_factory=dict)
    deployed: bool = False

    def __post_init__(self) -> None:
        s = self.settings
        common = [
            "--rpc-url", s.resolved_rpc_url,
            "--data-dir", str(s.ocean_data_dir),
            "--address-file", str(s.ocean_address_file),
            "--service-url", s.ocean_service_url,
            "--db-url", s.db_url,
        ]  # fmt: skip
        if s.ocean_k:
            common += ["--k", str(s.ocean_k)]
        py = sys.executable
        if not s.ocean_rpc_url:
            self.children["chain"] = OceanChild(
                "chain",
                [py, "-m", "marketplace.ocean.node", "--port", str(s.chain_port),
                 "--data-dir", str(s.ocean_data_dir)],
            )  # fmt: skip
        if s.ocean_deploy:
            # Its JSON summary (addresses, gas) goes to a file, not into the service log.
            self.children["deploy"] = OceanChild(
                "deploy", [py, str(DEPLOY_SCRIPT), *common], s.ocean_data_dir / "deploy.json"
            )
        else:
            self.deployed = True
        self.children["publisher"] = OceanChild(
            "publisher",
            [py, "-m", "marketplace.ocean.publish", "--every", str(s.publish_every_s), *common],
        )
        self.children["download service"] = OceanChild(
            "download service",
            [py, "-m", "marketplace.ocean.serve", "--host", s.host, "--port", str(s.ocean_port),
             *common],
        )  # fmt: skip

    def _chain_ready(self) -> bool:
        from marketplace.ocean.node import rpc_ready

        return rpc_ready(self.settings.resolved_rpc_url, timeout_s=0.5)

    def tick(self) -> None:
        """One supervision step: start what is due, restart what died."""
        now = time.monotonic()
        chain = self.children.get("chain")
        if chain is not None and not chain.running:
            if chain.process is not None:
                log.warning("chain exited (%s); restarting it", chain.reap())
                self.deployed = "deploy" not in self.children
            if now >= chain.not_before:
                chain.start()
        deploy = self.children.get("deploy")
        if deploy is not None and not self.deployed and not deploy.running:
            if deploy.process is not None:
                if deploy.process.returncode == 0:
                    self.deployed = True
                    log.info("Ocean contracts ready (%s)", self.settings.ocean_address_file)
                else:
                    log.warning("deployment failed (%s); retrying", deploy.process.returncode)
                deploy.reap()
            elif now >= deploy.not_before and self._chain_ready():
                deploy.start()
        if not self.deployed:
            return
        for name in ("publisher", "download service"):
            child = self.children[name]
            if child.running:
                continue
            if child.process is not None:
                log.warning("%s exited (%s); restarting it", name, child.reap())
            if now >= child.not_before:
                child.start()

    def stop(self) -> None:
        for name in ("publisher", "download service", "deploy", "chain"):
            if name in self.children:
                self.children[name].stop()


class Supervisor:
    def __init__(self, settings: PredictorSettings) -> None:
        self.settings = settings.with_link_secret()
        self.children: dict[int, subprocess.Popen] = {}
        self.stopping = False
        self.restarts: list[float] = []
        self.ocean = OceanSide(self.settings) if self.settings.ocean else None

    def _ranks(self) -> list[int]:
        return [0, 1] + ([2] if self.settings.provider == "TTP" else [])

    def start_parties(self) -> None:
        party_settings = replace(self.settings, master_port=free_port(self.settings.master_addr))
        base = [sys.executable, "-m", "predictor", *settings_to_argv(party_settings)]
        for rank in self._ranks():
            self.children[rank] = subprocess.Popen([*base, "--rank", str(rank)])
            log.info("party %d started (pid %d)", rank, self.children[rank].pid)

    def stop_parties(self) -> None:
        # Party 0 first: it tells party 1 (and the dealer) to stop over the MPC channel.
        for rank in sorted(self.children):
            stop_process(self.children[rank])
        self.children.clear()

    def _request_stop(self, *_args) -> None:
        self.stopping = True

    def where_users_go(self) -> list[str]:
        """One line per kind of user: where they go (logged at start)."""
        s = self.settings
        doctor = f"http://{s.host}:{s.doctor_port}"
        lines = [
            f"patients:    curl -F file=@scan.jpg {s.resolved_patient_url}/image"
            f"  (then GET /case/<id> with the patient token)",
            f"doctors:     {doctor}/  (web page; API token from "
            f"`python -m marketplace.doctors create --name ... --specialty ... --db-url {s.db_url}`)",
        ]
        if self.ocean is not None:
            lines.append(
                "researchers: python -m marketplace.researcher buy|download "
                f"--service-url {s.ocean_service_url} --rpc-url {s.resolved_rpc_url} "
                f"--address-file {s.ocean_address_file}"
            )
            lines.append(f"chain:       {s.resolved_rpc_url}")
        else:
            lines.append("researchers: Ocean side not started here (--no-ocean)")
        return lines

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        migrate(self.settings.db_url)
        self.start_parties()
        log.info(
            "patient API: %s  |  doctors: http://%s:%d",
            self.settings.resolved_patient_url,
            self.settings.host,
            self.settings.doctor_port,
        )
        for line in self.where_users_go():
            log.info("%s", line)
        try:
            while not self.stopping:
                time.sleep(POLL_S)
                if self.ocean is not None and not self.stopping:
                    self.ocean.tick()
                dead = {
                    rank: child.returncode
                    for rank, child in self.children.items()
                    if child.poll() is not None
                }
                if dead and not self.stopping:
                    if not self._may_restart():
                        log.error("parties keep dying (%s); giving up", dead)
                        return 1
                    log.warning("party exited %s; restarting both parties", dead)
                    self.stop_parties()
                    self.start_parties()
        finally:
            if self.ocean is not None:
                self.ocean.stop()
            self.stop_parties()
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        return len(self.restarts) <= MAX_RESTARTS_PER_MINUTE
