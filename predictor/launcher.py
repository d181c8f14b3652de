"""``python -m predictor``: start both MPC parties on this machine and keep them alive.

Each party is a separate OS process (``python -m predictor --rank N``) rendezvousing over
torch.distributed. If either dies, the supervisor stops the other and starts both again
on a fresh rendezvous port: queued cases are in the database and run again.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import replace

from marketplace.storage import migrate
from models.mpc import free_port
from predictor.settings import PredictorSettings, settings_to_argv

log = logging.getLogger("predictor.launcher")

POLL_S = 0.2
MAX_RESTARTS_PER_MINUTE = 5


class Supervisor:
    def __init__(self, settings: PredictorSettings) -> None:
        self.settings = settings.with_link_secret()
        self.children: dict[int, subprocess.Popen] = {}
        self.stopping = False
        self.restarts: list[float] = []

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
            child = self.children[rank]
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        self.children.clear()

    def _request_stop(self, *_args) -> None:
        self.stopping = True

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
        try:
            while not self.stopping:
                time.sleep(POLL_S)
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
            self.stop_parties()
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        return len(self.restarts) <= MAX_RESTARTS_PER_MINUTE
