"""The Ocean side the single-host supervisor runs next to the parties.

The local ganache chain (only when no external RPC URL is configured), the idempotent contract
deployment, the publisher loop and the research-data download service. Each is restarted on
its own if it dies; after a chain restart the deployment runs again (a no-op when the contracts
are still there).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infra.settings import ENV_PREFIX
from predictor.settings import PredictorSettings

log = logging.getLogger("predictor.supervisor")

#: The variable every Ocean child reads the marketplace's store from (``OceanSettings.db_url``).
DB_URL_ENV = ENV_PREFIX + "DB_URL"

#: A dead Ocean child is started again at most this often (it never gives up: a chain may
#: be down for long, the parties keep serving patients meanwhile).
OCEAN_RESTART_DELAY_S = 2.0


def flags_to_env(argv: list[str], names: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Move the flags in ``names`` (flag -> variable) out of ``argv`` into variables.

    For values that may carry a password, as a database URL does: a child gets them in its
    environment, like its secrets, since every local user can read a command line.
    """
    kept: list[str] = []
    moved: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        if arg in names:
            moved[names[arg]] = next(args, "")
        else:
            kept.append(arg)
    return kept, moved


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
class SupervisedChild:
    """A process restarted on its own when it dies (the marketplace, each Ocean piece)."""

    name: str
    argv: list[str]
    #: Where the child's stdout goes (None: the supervisor's own stdout).
    stdout_path: Path | None = None
    #: The child's whole environment (None: inherit the supervisor's).
    env: dict[str, str] | None = None
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
            self.process = subprocess.Popen(self.argv, start_new_session=True, env=self.env)
        else:
            self.stdout_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.stdout_path, "wb") as out:
                self.process = subprocess.Popen(
                    self.argv, stdout=out, start_new_session=True, env=self.env
                )
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
    #: The environment every Ocean child gets (the marketplace operator's variables only).
    env: dict[str, str] | None = None
    children: dict[str, SupervisedChild] = field(default_factory=dict)
    deployed: bool = False

    def __post_init__(self) -> None:
        s = self.settings
        # The store's URL may carry a password: in the environment, never on a command line.
        self.env = {**(os.environ if self.env is None else self.env), DB_URL_ENV: s.market_db_url}
        common = [
            "--rpc-url", s.resolved_rpc_url,
            "--data-dir", str(s.ocean_data_dir),
            "--address-file", str(s.ocean_address_file),
            "--service-url", s.ocean_service_url,
        ]  # fmt: skip
        if s.ocean_k:
            common += ["--k", str(s.ocean_k)]
        py = sys.executable
        if not s.ocean_rpc_url:
            self.children["chain"] = SupervisedChild(
                "chain",
                [py, "-m", "marketplace.ocean.node", "--port", str(s.chain_port),
                 "--data-dir", str(s.ocean_data_dir)],
                env=self.env,
            )  # fmt: skip
        if s.ocean_deploy:
            # Its JSON summary (addresses, gas) goes to a file, not into the service log.
            self.children["deploy"] = SupervisedChild(
                "deploy",
                [py, "-m", "marketplace.ocean.deploy", *common],
                s.ocean_data_dir / "deploy.json",
                env=self.env,
            )
        else:
            self.deployed = True
        self.children["publisher"] = SupervisedChild(
            "publisher",
            [
                py,
                "-m",
                "marketplace.ocean.publish",
                "--every",
                str(s.publish_every_s),
                "--metrics-port",
                str(s.publish_metrics_port),
                *common,
            ],
            env=self.env,
        )
        self.children["download service"] = SupervisedChild(
            "download service",
            [py, "-m", "marketplace.ocean.serve", "--host", s.host, "--port", str(s.ocean_port),
             *common, *(["--access-log"] if s.access_log else [])],
            env=self.env,
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
