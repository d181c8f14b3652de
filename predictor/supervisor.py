"""``python -m predictor``: start everything on this machine and keep it alive.

- The two MPC parties (and the TTP dealer), each a separate OS process
  (``python -m predictor --rank N``) rendezvousing over torch.distributed. If either dies,
  the supervisor stops the other and starts both again on a fresh rendezvous port: queued
  cases are in the database and run again. Settings reach the parties as flags, secrets as
  environment variables (never on a command line).
- The Ocean side (:mod:`predictor.ocean_side`), unless ``--no-ocean``.

SIGTERM/SIGINT stop every child (publisher and services first, the chain last).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from infra.net import free_port
from infra.settings import secrets_to_env, settings_to_argv
from marketplace.storage import migrate
from predictor.ocean_side import OceanSide, stop_process
from predictor.settings import PredictorSettings

log = logging.getLogger("predictor.supervisor")

POLL_S = 0.2
MAX_RESTARTS_PER_MINUTE = 5


class Supervisor:
    def __init__(self, settings: PredictorSettings) -> None:
        self.settings = settings.with_link_secret()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts: list[float] = []
        self.restart_count = 0
        self.ocean = OceanSide(self.settings) if self.settings.ocean else None

    def _ranks(self) -> list[int]:
        return [0, 1] + ([2] if self.settings.provider == "TTP" else [])

    def start_parties(self) -> None:
        party_settings = replace(
            self.settings,
            master_port=free_port(self.settings.master_addr),
            restarts=self.restart_count,
        )
        base = [sys.executable, "-m", "predictor", *settings_to_argv(party_settings)]
        env = {**os.environ, **secrets_to_env(party_settings)}
        for rank in self._ranks():
            self.children[rank] = subprocess.Popen([*base, "--rank", str(rank)], env=env)
            log.info("party %d started (pid %d)", rank, self.children[rank].pid)

    def stop_parties(self) -> None:
        # Party 0 first: it tells party 1 (and the dealer) to stop over the MPC channel.
        for rank in sorted(self.children):
            stop_process(self.children[rank])
        self.children.clear()

    def _request_stop(self, *_args: object) -> None:
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
        lines.append(
            f"operators:   {s.resolved_patient_url}/metrics and {doctor}/metrics (from this host)"
        )
        return lines

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        migrate(self.settings.db_url)
        self.start_parties()
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
                    self.restart_count += 1
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
