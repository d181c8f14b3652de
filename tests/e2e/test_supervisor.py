"""``python -m predictor`` with the Ocean side: supervised children come back, SIGTERM stops all."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from infra.messaging import generate_key
from infra.net import free_port
from infra.settings import secrets_to_env, settings_to_argv
from marketplace.ocean.node import rpc_ready
from marketplace.ocean.settings import dev_key
from marketplace.storage import make_engine, normalize_url
from predictor.settings import PredictorSettings
from predictor.settings import parse_predictor_settings as parse_settings

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "CRYPTO_DOCTOR_TEST_PG_URL"


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
    def __init__(self, work: Path, env: dict[str, str] | None = None) -> None:
        """The supervisor with the Ocean side; ``env`` adds variables (stores, keys) to its own."""
        self.ports = {name: free_port() for name in ("patient", "doctor", "chain", "ocean")}
        self.log = work / "supervisor.log"
        env = {**os.environ, **(env or {})}
        argv = [
            sys.executable, "-m", "predictor",
            "--patient-port", str(self.ports["patient"]), "--doctor-port", str(self.ports["doctor"]),
            "--chain-port", str(self.ports["chain"]), "--ocean-port", str(self.ports["ocean"]),
            "--data-dir", str(work / "party0"),
            "--ocean-data-dir", str(work / "ocean"), "--publish-every-s", "1",
            "--passport-mint",  # the seed model's passport, as scripts/run does
        ]  # fmt: skip
        if "CRYPTO_DOCTOR_MARKET_DB_URL" not in env:
            argv += ["--market-db-url", f"sqlite:///{work / 'market.sqlite3'}"]
        if "CRYPTO_DOCTOR_CLINIC_DB_URL" not in env:
            argv += ["--clinic-db-url", f"sqlite:///{work / 'clinic.sqlite3'}"]
        model = ROOT / "models" / "lenet.pth"
        if model.exists():
            argv += ["--model-path", str(model)]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )

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
        run.wait("the ready line", lambda: "ready:" in run.text())
        assert _get(service), "the download service did not answer when ready: was logged"
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


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, their children, ...)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += children
        frontier = children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


#: Which supervised process a command line belongs to.
ROLES = {
    "party 0": "--rank 0",
    "party 1": "--rank 1",
    "marketplace": "marketplace.service",
    "chain": "marketplace.ocean.node",
    "ganache": "ganache",
    "deploy": "marketplace.ocean.deploy",
    "publisher": "marketplace.ocean.publish",
    "download service": "marketplace.ocean.serve",
}


@pytest.fixture
def stores_with_a_password() -> Iterator[tuple[dict[str, str], str]]:
    """The clinic's and the marketplace's databases on PostgreSQL, by URLs with a password."""
    admin_url = make_url(normalize_url(os.environ[PG_ENV]))
    # The throwaway cluster trusts local connections and ignores a password; a server that
    # asks for one gets the admin's.
    password = admin_url.password or "pw-" + secrets.token_hex(12)
    names = {org: f"cdtest_{org}_{uuid.uuid4().hex[:10]}" for org in ("clinic", "market")}
    admin = make_engine(admin_url.render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in names.values():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            {
                org: admin_url.set(database=name, password=str(password)).render_as_string(
                    hide_password=False
                )
                for org, name in names.items()
            },
            str(password),
        )
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.slow
@pytest.mark.chain
@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} not set")
def test_no_supervised_process_shows_a_secret_on_its_command_line(
    tmp_path: Path, stores_with_a_password: tuple[dict[str, str], str]
) -> None:
    stores, password = stores_with_a_password
    chain_keys = {
        "CRYPTO_DOCTOR_OCEAN_PUBLISHER_KEY": dev_key(0),
        "CRYPTO_DOCTOR_OCEAN_PROVIDER_KEY": dev_key(0),
        "CRYPTO_DOCTOR_OCEAN_RESEARCHER_KEY": dev_key(1),
    }
    env = {
        "CRYPTO_DOCTOR_CLINIC_DB_URL": stores["clinic"],
        "CRYPTO_DOCTOR_MARKET_DB_URL": stores["market"],
        "CRYPTO_DOCTOR_CLINIC_KEY": generate_key(),
        "CRYPTO_DOCTOR_MARKET_KEY": generate_key(),
        "CRYPTO_DOCTOR_OPERATOR_TOKEN": "op-" + secrets.token_urlsafe(18),
        **chain_keys,
    }
    secret_values = [
        password,
        env["CRYPTO_DOCTOR_CLINIC_KEY"],
        env["CRYPTO_DOCTOR_MARKET_KEY"],
        env["CRYPTO_DOCTOR_OPERATOR_TOKEN"],
        *(key.removeprefix("0x") for key in chain_keys.values()),
    ]
    run = Run(tmp_path, env)
    service = f"http://127.0.0.1:{run.ports['ocean']}/"
    seen: dict[int, str] = {}

    def look() -> bool:
        """Record every supervised command line; True once the run says it is ready."""
        for pid in _descendants(run.process.pid):
            seen.setdefault(pid, _cmdline(pid))
        return "ready:" in run.text()

    try:
        run.wait("the ready line", look, timeout=300)
        # ready: means every service answers now, the download service included.
        with urllib.request.urlopen(service, timeout=5) as reply:
            assert reply.status == 200
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
            assert "Server" not in reply.headers
        for port in ("patient", "doctor"):
            assert _get(f"http://127.0.0.1:{run.ports[port]}/healthz")
    finally:
        run.process.send_signal(signal.SIGTERM)
        code = run.process.wait(timeout=120)
    assert code == 0
    roles = {role for cmdline in seen.values() for role, key in ROLES.items() if key in cmdline}
    assert roles == set(ROLES), f"not seen: {set(ROLES) - roles}"
    for pid, cmdline in seen.items():
        for value in secret_values:
            assert value not in cmdline, f"pid {pid} shows a secret: {cmdline[:300]}"
    assert password not in run.text(), "the supervisor's log shows the database password"
