"""``python -m predictor``: start everything on this machine and keep it alive.

Three organisations run here side by side, each with its own store and secrets:
- the clinic, MPC party 0 (``python -m predictor --rank 0``): patient API, images, its store;
- the model owner, MPC party 1 (``--rank 1``, and the TTP dealer ``--rank 2``): the weights;
- the marketplace (``python -m marketplace.service``) and its Ocean side
  (:mod:`predictor.ocean_side`): doctors, votes, ledger, research rows.
Each child gets only its own organisation's configuration: flags for settings, its own
secrets in its environment (never on a command line), and no ``CRYPTO_DOCTOR_*`` variable
of anyone else. If a party dies, both parties restart on a fresh rendezvous port (queued
cases are in the clinic's store and run again); the marketplace and the Ocean pieces restart
alone. SIGTERM/SIGINT stop every child.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

from infra.messaging import public_key
from infra.net import free_port
from infra.settings import ENV_PREFIX, secrets_to_env, settings_to_argv
from marketplace.service.settings import MarketplaceSettings
from predictor.ocean_side import OceanSide, SupervisedChild, stop_process
from predictor.settings import PredictorSettings

log = logging.getLogger("predictor.supervisor")

POLL_S = 0.2
MAX_RESTARTS_PER_MINUTE = 5
#: The marketplace operator's own variables that its Ocean children read (their keys).
OCEAN_ENV = ENV_PREFIX + "OCEAN_"


def clean_environment() -> dict[str, str]:
    """The supervisor's environment without any ``CRYPTO_DOCTOR_*`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def party_settings(
    s: PredictorSettings, rank: int, master_port: int, restarts: int
) -> PredictorSettings:
    """What one party is configured with: nothing of the marketplace's, nothing of the other's."""
    mine = replace(s, rank=rank, master_port=master_port, market_db_url="", market_key="")
    if rank == 0:
        return replace(mine, restarts=restarts)
    # The model side (and the dealer) hold no case data: no store, no images, no clinic key.
    return replace(mine, clinic_db_url="", clinic_key="", data_dir=None, operator_token="")


def marketplace_settings(s: PredictorSettings) -> MarketplaceSettings:
    """The marketplace's own configuration: its store, its key, the clinic's public key."""
    return MarketplaceSettings(
        db_url=s.market_db_url,
        host=s.host,
        port=s.doctor_port,
        patient_base_url=s.resolved_patient_url,
        clinic_public_key=public_key(s.clinic_key),
        signing_key=s.market_key,
        image_link_ttl_s=s.link_ttl_s,
        policy=s.policy,
        operator_token=s.operator_token,
    )


class Supervisor:
    def __init__(self, settings: PredictorSettings) -> None:
        self.settings = settings.with_keys()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts: list[float] = []
        self.restart_count = 0
        market = marketplace_settings(self.settings)
        self.marketplace = SupervisedChild(
            "marketplace",
            [sys.executable, "-m", "marketplace.service", *settings_to_argv(market)],
            env={**clean_environment(), **secrets_to_env(market)},
        )
        ocean_env = {
            **clean_environment(),
            **{k: v for k, v in os.environ.items() if k.startswith(OCEAN_ENV)},
            **(
                {ENV_PREFIX + "OPERATOR_TOKEN": market.operator_token}
                if market.operator_token
                else {}
            ),
        }
        self.ocean = OceanSide(self.settings, ocean_env) if self.settings.ocean else None

    def _ranks(self) -> list[int]:
        return [0, 1] + ([2] if self.settings.provider == "TTP" else [])

    def start_parties(self) -> None:
        master_port = free_port(self.settings.master_addr)
        for rank in self._ranks():
            mine = party_settings(self.settings, rank, master_port, self.restart_count)
            argv = [sys.executable, "-m", "predictor", *settings_to_argv(mine)]
            env = {**clean_environment(), **secrets_to_env(mine)}
            self.children[rank] = subprocess.Popen(argv, env=env)
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
            f"`python -m marketplace.doctors --db-url {s.market_db_url} create --name ... "
            "--specialty ...`)",
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
        self.marketplace.start()
        self.start_parties()
        for line in self.where_users_go():
            log.info("%s", line)
        try:
            while not self.stopping:
                time.sleep(POLL_S)
                if self.stopping:
                    break
                self._keep_marketplace()
                if self.ocean is not None:
                    self.ocean.tick()
                dead = {
                    rank: child.returncode
                    for rank, child in self.children.items()
                    if child.poll() is not None
                }
                if dead:
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
            self.marketplace.stop()
        return 0

    def _keep_marketplace(self) -> None:
        child = self.marketplace
        if child.running:
            return
        if child.process is not None:
            log.warning("marketplace exited (%s); restarting it", child.reap())
        if time.monotonic() >= child.not_before:
            child.start()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        return len(self.restarts) <= MAX_RESTARTS_PER_MINUTE
