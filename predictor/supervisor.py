"""``python -m predictor``: start everything on this machine and keep it alive.

Three organisations run here side by side, each with its own store and secrets:
- the clinic, MPC party 0 (``python -m predictor --rank 0``): patient API, images, its store;
- the model owner, MPC party 1 (``--rank 1``, and the TTP dealer ``--rank 2``): the weights;
- the marketplace (``python -m marketplace.service``) and its Ocean side
  (:mod:`predictor.ocean_side`): doctors, votes, ledger, research rows.
Each child gets only its own organisation's configuration: flags for settings, its own
secrets and database URL in its environment (never on a command line), and no
``CRYPTO_DOCTOR_*`` variable of anyone else. If a party dies, both parties restart on a fresh
rendezvous port (queued cases are in the clinic's store and run again); the marketplace and
the Ocean pieces restart alone. With ``--pairs N`` (and ``--processes-per-pair K``) it runs
N x K such MPC sessions, each restarted on its own; they share the clinic's queue in its
PostgreSQL store, and pair 0's process 0 is the one that serves patients. Party 1 serves only
a checkpoint its owner's passport on chain attests (:mod:`predictor.model_passport`): its
refusal (exit 78) ends the run instead of a restart loop; ``--passport-mint`` mints the
served checkpoint's passport (idempotent) before the parties start. The supervisor holds the patient port itself and answers 503
there while party 0 is down (:mod:`predictor.standby`). It logs one ``ready:`` line once every
service answers. SIGTERM/SIGINT stop every child.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from infra.messaging import public_key
from infra.net import free_port
from infra.settings import ENV_PREFIX, secrets_to_env, settings_to_argv
from marketplace.ocean.chain import ChainUnavailable
from marketplace.ocean.passport import PassportError
from marketplace.service.settings import MarketplaceSettings
from models.passport.entry import EntryError
from models.passport.registry import companion, mint, read_json
from predictor.model_passport import EXIT_UNATTESTED, passport_settings
from predictor.ocean_side import OceanSide, SupervisedChild, flags_to_env, stop_process
from predictor.settings import PredictorSettings
from predictor.standby import Standby, listening_socket

log = logging.getLogger("predictor.supervisor")

POLL_S = 0.2
MAX_RESTARTS_PER_MINUTE = 5
#: The marketplace operator's own variables that its Ocean children read (their keys).
OCEAN_ENV = ENV_PREFIX + "OCEAN_"
#: Flags whose values may carry a password, and the variables children read them from.
PARTY_URL_FLAGS = {
    "--clinic-db-url": ENV_PREFIX + "CLINIC_DB_URL",
    "--market-db-url": ENV_PREFIX + "MARKET_DB_URL",
}
MARKETPLACE_URL_FLAGS = {"--db-url": ENV_PREFIX + "DB_URL"}
#: How long one readiness probe may take (the supervisor probes until everything answers).
PROBE_TIMEOUT_S = 1.0


def clean_environment() -> dict[str, str]:
    """The supervisor's environment without any ``CRYPTO_DOCTOR_*`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


#: One MPC session: (pair id, process within the pair).
Slot = tuple[int, int]
FRONT_DOOR: Slot = (0, 0)


def party_settings(
    s: PredictorSettings, rank: int, master_port: int, restarts: int, slot: Slot = FRONT_DOOR
) -> PredictorSettings:
    """What one party is configured with: nothing of the marketplace's, nothing of the other's."""
    mine = replace(
        s,
        rank=rank,
        master_port=master_port,
        market_db_url="",
        market_key="",
        pair_id=slot[0],
        pair_process=slot[1],
        # Party 1 checks passports by their owner's address: no party holds the owner's key.
        passport_owner=passport_settings(s).owner,
        passport_owner_key="",
        # No chain of ours starting up (--no-ocean, no external one): ask once, do not wait.
        passport_wait_s=s.passport_wait_s if s.ocean or s.ocean_rpc_url else 0.0,
    )
    if rank == 0 and slot != FRONT_DOOR:
        # Another pair's party 0 only computes: it needs the store and the images, not the
        # clinic's signing key (the front door's courier sends what it records).
        return replace(mine, restarts=restarts, clinic_key="", operator_token="")
    if rank == 0:
        return replace(mine, restarts=restarts)
    # The model side (and the dealer) hold no case data: no store, no images, no clinic key.
    return replace(mine, clinic_db_url="", clinic_key="", data_dir=None, operator_token="")


def shown_url(url: str) -> str:
    """A database URL fit for a log: its password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def local_url(host: str, port: int) -> str:
    """Where this host reaches a service listening on ``host:port``."""
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


def answers(url: str) -> dict | None:
    """The JSON a service answers ``GET url`` with, or None (down, starting, not 200)."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as reply:
            body = json.loads(reply.read())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def marketplace_settings(s: PredictorSettings) -> MarketplaceSettings:
    """The marketplace's own configuration: its store, its key, the clinic's public key, and
    where its case answers link model passports (the Ocean service run here, if any)."""
    return MarketplaceSettings(
        db_url=s.market_db_url,
        host=s.host,
        port=s.doctor_port,
        patient_base_url=s.resolved_patient_url,
        passport_view_url=s.passport_view_url,
        clinic_public_key=public_key(s.clinic_key),
        signing_key=s.market_key,
        policy=s.policy,
        operator_token=s.operator_token,
        access_log=s.access_log,
    )


class Supervisor:
    def __init__(self, settings: PredictorSettings) -> None:
        self.settings = settings.with_keys()
        #: Every MPC session's processes, by slot (pair, process) and rank.
        self.children: dict[Slot, dict[int, subprocess.Popen[bytes]]] = {}
        self.stopping = False
        self.restarts: dict[Slot, list[float]] = {}
        self.restart_counts: dict[Slot, int] = {}
        market = marketplace_settings(self.settings)
        market_argv, market_urls = flags_to_env(settings_to_argv(market), MARKETPLACE_URL_FLAGS)
        self.marketplace = SupervisedChild(
            "marketplace",
            [sys.executable, "-m", "marketplace.service", *market_argv],
            env={**clean_environment(), **secrets_to_env(market), **market_urls},
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
        #: The patient port, held for the whole run (bound in :meth:`run`).
        self.patient_socket: socket.socket | None = None
        self.standby: Standby | None = None
        #: Read end of the pipe the current party 0 writes to once it serves patients.
        self.party0_ready: int | None = None
        self.announced = False

    def _ranks(self) -> list[int]:
        return [0, 1] + ([2] if self.settings.provider == "TTP" else [])

    def slots(self) -> list[Slot]:
        s = self.settings
        return [(p, k) for p in range(s.pairs) for k in range(s.processes_per_pair)]

    @staticmethod
    def _name(slot: Slot, rank: int) -> str:
        return (
            f"party {rank}" if slot == FRONT_DOOR else f"party {rank} of pair {slot[0]}.{slot[1]}"
        )

    def start_parties(self) -> None:
        for slot in self.slots():
            self.start_session(slot)

    def start_session(self, slot: Slot) -> None:
        """One MPC session (party 0, party 1, the dealer) on a fresh rendezvous port."""
        master_port = free_port(self.settings.master_addr)
        children = self.children.setdefault(slot, {})
        restarts = self.restart_counts.get(slot, 0)
        for rank in self._ranks():
            mine = party_settings(self.settings, rank, master_port, restarts, slot)
            passed: tuple[int, ...] = ()
            ready_write = -1
            if rank == 0 and slot == FRONT_DOOR and self.patient_socket is not None:
                self._close_ready_pipe()
                self.party0_ready, ready_write = os.pipe()
                os.set_blocking(self.party0_ready, False)
                passed = (self.patient_socket.fileno(), ready_write)
                mine = replace(
                    mine, patient_socket_fd=self.patient_socket.fileno(), ready_fd=ready_write
                )
            argv, urls = flags_to_env(settings_to_argv(mine), PARTY_URL_FLAGS)
            env = {**clean_environment(), **secrets_to_env(mine), **urls}
            children[rank] = subprocess.Popen(
                [sys.executable, "-m", "predictor", *argv], env=env, pass_fds=passed
            )
            if ready_write >= 0:
                os.close(ready_write)
            log.info("%s started (pid %d)", self._name(slot, rank), children[rank].pid)

    def stop_parties(self) -> None:
        # Every party 0 first: each tells its party 1 (and dealer) to stop over the MPC channel.
        for rank in sorted({r for children in self.children.values() for r in children}):
            for children in self.children.values():
                if rank in children and children[rank].poll() is None:
                    children[rank].terminate()
            for children in self.children.values():
                if rank in children:
                    stop_process(children[rank])
        self.children.clear()

    def stop_session(self, slot: Slot) -> None:
        for rank in sorted(self.children.get(slot, {})):
            stop_process(self.children[slot][rank])
        self.children.pop(slot, None)

    def _close_ready_pipe(self) -> None:
        if self.party0_ready is not None:
            os.close(self.party0_ready)
            self.party0_ready = None

    def _watch_party0(self) -> None:
        """Stop answering in party 0's place once it says it serves patients."""
        if self.party0_ready is None:
            return
        try:
            said = os.read(self.party0_ready, 1)
        except BlockingIOError:
            return
        self._close_ready_pipe()
        if said and self.standby is not None:  # nothing said: it died first (restarted below)
            self.standby.stop()

    def _request_stop(self, *_args: object) -> None:
        self.stopping = True

    def where_users_go(self) -> list[str]:
        """One line per kind of user: where they go (logged once everything answers)."""
        s = self.settings
        doctor = f"http://{s.host}:{s.doctor_port}"
        lines = [
            f"patients:    curl -X POST -F file=@samples/Y22.jpg {s.resolved_patient_url}/image"
            f"  (then GET /case/<id> with the patient token)",
            f"doctors:     {doctor}/  (web page; API token from "
            f"`python -m marketplace.doctors --db-url {shown_url(s.market_db_url)} create "
            "--name ... --specialty ...`)",
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

    def service_urls(self) -> dict[str, str]:
        """What must answer before the run is ready: each service's probe URL, by user."""
        s = self.settings
        urls = {
            "patients": local_url(s.host, s.patient_port) + "/healthz",
            "doctors": local_url(s.host, s.doctor_port) + "/healthz",
        }
        if self.ocean is not None:
            urls["researchers"] = local_url(s.host, s.ocean_port) + "/"
        return urls

    def _announce_when_ready(self) -> None:
        """Log ``ready:`` (then where each user goes) once, when every service answers."""
        if self.announced or self.party0_ready is not None or not self.children:
            return
        for user, url in self.service_urls().items():
            body = answers(url)
            if body is None or (user == "patients" and not body.get("mpc_ready")):
                return
        self.announced = True
        s = self.settings
        public = {
            "patients": s.resolved_patient_url,
            "doctors": f"http://{s.host}:{s.doctor_port}",
            "researchers": s.ocean_service_url,
        }
        log.info(
            "ready: %s",
            ", ".join(f"{user} {public[user]}" for user in self.service_urls()),
        )
        for line in self.where_users_go():
            log.info("%s", line)

    def run(self) -> int:
        s = self.settings
        try:
            self.patient_socket = listening_socket(s.host, s.patient_port)
        except OSError as exc:
            log.error("cannot listen for patients on %s:%d: %s", s.host, s.patient_port, exc)
            return 2
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.standby = Standby(self.patient_socket)
        self.standby.start()
        try:
            self.marketplace.start()
            if s.passport_mint and not self.mint_passport():
                return 0 if self.stopping else EXIT_UNATTESTED
            self.start_parties()
            return self._supervise()
        finally:
            if self.ocean is not None:
                self.ocean.stop()
            self.stop_parties()
            self.marketplace.stop()
            self._close_ready_pipe()
            self.standby.close()
            self.patient_socket.close()
            log.info("all services stopped")

    def _supervise(self) -> int:
        assert self.standby is not None
        while not self.stopping:
            time.sleep(POLL_S)
            if self.stopping:
                break
            self._keep_marketplace()
            if self.ocean is not None:
                self.ocean.tick()
            self._watch_party0()
            for slot in self.slots():
                dead = {
                    rank: child.returncode
                    for rank, child in self.children.get(slot, {}).items()
                    if child.poll() is not None
                }
                if not dead:
                    continue
                if EXIT_UNATTESTED in dead.values():
                    log.error(
                        "party 1 refuses to serve an unattested model (its line above says why "
                        "and how to fix it); not restarting"
                    )
                    return EXIT_UNATTESTED
                if slot == FRONT_DOOR:
                    # Patients are answered 503 (never refused) until the new party 0 serves.
                    self.standby.start()
                if not self._may_restart(slot):
                    log.error("parties keep dying (%s); giving up", dead)
                    return 1
                if slot == FRONT_DOOR:
                    log.warning("party exited %s; restarting both parties", dead)
                else:
                    log.warning(
                        "pair %d.%d: party exited %s; restarting the pair (its leased cases "
                        "go to the other pairs when their lease expires)",
                        *slot,
                        dead,
                    )
                self.stop_session(slot)
                self.restart_counts[slot] = self.restart_counts.get(slot, 0) + 1
                self.start_session(slot)
            self._announce_when_ready()
        return 0

    def mint_passport(self, timeout_s: float = 300.0) -> bool:
        """Mint the served checkpoint's passport (idempotent) once the chain is deployed.

        As ``python -m models.passport mint`` does, from ``<stem>.provenance.json``; the Ocean
        side keeps starting meanwhile. False (logged) when it cannot.
        """
        s = self.settings
        deadline = time.monotonic() + timeout_s
        while self.ocean is not None and not self.ocean.deployed:
            if self.stopping or time.monotonic() > deadline:
                log.error("the chain was not ready for minting the model's passport in time")
                return False
            self.ocean.tick()
            time.sleep(POLL_S)
        passports = passport_settings(s)
        checkpoint = s.resolved_model_path
        try:  # in this process: the supervisor holds every organisation's keys anyway
            result = mint(
                passports.chain(),
                passports.documents(),
                passports.wallet(),
                checkpoint,
                read_json(companion(checkpoint, ".provenance.json")),
                lineage=checkpoint.stem,
            )
        except (ChainUnavailable, PassportError, EntryError, OSError) as exc:
            log.error("minting the model's passport failed: %s", exc)
            return False
        log.info(
            "model passport: %s is %s (passport %s, %s)",
            checkpoint,
            result.attestation.model_version,
            result.attestation.passport_id,
            "minted now" if result.minted else "already minted",
        )
        return True

    def _keep_marketplace(self) -> None:
        child = self.marketplace
        if child.running:
            return
        if child.process is not None:
            log.warning("marketplace exited (%s); restarting it", child.reap())
        if time.monotonic() >= child.not_before:
            child.start()

    def _may_restart(self, slot: Slot) -> bool:
        now = time.monotonic()
        recent = [t for t in self.restarts.get(slot, []) if now - t < 60] + [now]
        self.restarts[slot] = recent
        return len(recent) <= MAX_RESTARTS_PER_MINUTE
