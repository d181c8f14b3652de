"""Start the federation's real processes: SuperLink, SuperNodes, ``flwr`` commands.

Every Flower program comes from the federation venv (``.venv-fed/bin``, or the venv this
runs in when it has Flower); this module only builds their command lines and environments,
so it runs from either venv. No secret is ever on a command line: keys are files (0600).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from training.federated.protocol import NODE_DATA_DIR, NODE_SIMULATE, RunConfig

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = Path(__file__).resolve().parent / "app"
FEDERATION_VENV = ROOT / ".venv-fed"
CONNECTION = "federation"


class FlowerError(RuntimeError):
    """A Flower process failed; the message says which and why."""


def flower_bin() -> Path:
    """Where ``flower-superlink`` and friends live."""
    here = Path(sys.executable).parent
    if (here / "flower-superlink").exists():
        return here
    if (FEDERATION_VENV / "bin" / "flower-superlink").exists():
        return FEDERATION_VENV / "bin"
    raise FlowerError(
        f"Flower is not installed: run scripts/setup (it builds {FEDERATION_VENV.name}/, the "
        "federation venv)"
    )


def flower_env(home: Path) -> dict[str, str]:
    """Environment of a Flower process: its own FLWR_HOME, the federation venv first on PATH."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["PATH"] = f"{flower_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env.pop("VIRTUAL_ENV", None)
    return env


def write_connection(home: Path, address: str, root_cert: Path) -> None:
    """FLWR_HOME/config.toml naming the SuperLink the ``flwr`` CLI talks to."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{address}"\n'
        f'root-certificates = "{root_cert.resolve()}"\n'
    )


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise FlowerError(f"the process exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise FlowerError(f"nothing listens on {host}:{port} after {timeout:g} s")


@dataclass(frozen=True)
class SuperLinkFiles:
    """The model owner's federation folder."""

    state: Path

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def home(self) -> Path:
        return self.state / "flwr-home"

    @property
    def registry(self) -> Path:
        return self.state / "hospitals.json"

    @property
    def database(self) -> Path:
        return self.state / "superlink.db"


def superlink_command(files: SuperLinkFiles, host: str, port: int) -> list[str]:
    pki = files.pki
    return [
        str(flower_bin() / "flower-superlink"),
        "--ssl-ca-certfile", str(pki / "ca.pem"),
        "--ssl-certfile", str(pki / "server.pem"),
        "--ssl-keyfile", str(pki / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database", str(files.database),
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip


def supernode_command(
    *,
    superlink: str,
    root_cert: Path,
    key: Path,
    data_dir: Path,
    clientappio_port: int,
    simulate: str = "none",
) -> list[str]:
    config = f'{NODE_DATA_DIR}="{data_dir.resolve()}"'
    if simulate != "none":
        config += f' {NODE_SIMULATE}="{simulate}"'
    return [
        str(flower_bin() / "flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(root_cert),
        "--auth-supernode-private-key", str(key),
        "--node-config", config,
        "--host", "127.0.0.1",
        "--port", str(clientappio_port),
        "--max-retries", "3",
    ]  # fmt: skip


def register(files: SuperLinkFiles, public_key: Path, pseudonym: str) -> int:
    """Register a hospital's public key with the SuperLink; record node id -> pseudonym."""
    result = subprocess.run(
        [str(flower_bin() / "flwr"), "supernode", "register", str(public_key), CONNECTION,
         "--name", pseudonym, "--format", "json"],
        env=flower_env(files.home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        answer = json.loads(result.stdout[result.stdout.index("{") :])
        node_id = int(answer["node-id"])
    except (ValueError, KeyError) as exc:
        raise FlowerError(
            f"registering {public_key} failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()[-800:]}"
        ) from exc
    entries = json.loads(files.registry.read_text()) if files.registry.is_file() else {}
    entries[pseudonym] = {
        "node_id": node_id,
        "pseudonym": pseudonym,
        "public_key": public_key.read_text().strip(),
    }
    tmp = files.registry.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(files.registry)
    return node_id


def run_config_file(path: Path, run: RunConfig) -> Path:
    """The run configuration as the TOML file ``flwr run --run-config`` reads."""
    lines = []
    for key, value in run.to_flower().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def submit_run(
    files: SuperLinkFiles, run: RunConfig, log: IO[str] | None = None, timeout: float = 3600
) -> None:
    """``flwr run`` the app with ``run``; wait for it; fail unless the checkpoint was written."""
    config = run_config_file(files.state / "run-config.toml", run)
    out = Path(run.out)
    before = out.stat().st_mtime if out.exists() else None
    proc = subprocess.run(
        [str(flower_bin() / "flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", str(config), "--stream"],
        env=flower_env(files.home), stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )  # fmt: skip
    written = out.exists() and out.stat().st_mtime != before
    if proc.returncode != 0 or not written:
        tail = (
            (proc.stdout or "")[-3000:] if log is None else f"see {getattr(log, 'name', 'the log')}"
        )
        raise FlowerError(
            f"the federated run did not produce {out} (exit {proc.returncode}): {tail}"
        )


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (the process group, for Flower's children)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        process.wait()


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    return subprocess.Popen(
        command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def clean(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
