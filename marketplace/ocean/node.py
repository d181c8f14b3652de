"""Start and stop the project's local EVM chain: ganache from the repo's own node_modules.

Why ganache and not the in-process eth-tester: the download service and the researcher CLI are
separate processes that must see the same chain, which needs a node with a port. The chain keeps
its state in `db_path`, so a stopped node restarted on the same directory resumes where it was.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from infra.net import free_port
from infra.settings import flag, nested, parse_settings
from marketplace.ocean.settings import DEV_CHAIN_ID, DEV_MNEMONIC, OceanSettings

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


class NodeError(RuntimeError):
    """The chain node could not be started or did not answer in time."""


def ganache_binary(repo_root: Path = REPO_ROOT) -> Path:
    """The ganache CLI installed by `npm ci` at the repo root."""
    path = repo_root / "node_modules" / ".bin" / "ganache"
    if not path.exists():
        raise NodeError(f"{path} missing: run `npm ci` at the repository root")
    return path


def rpc_ready(url: str, timeout_s: float = 1.0) -> bool:
    """True when the JSON-RPC endpoint answers eth_chainId."""
    try:
        reply = requests.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
            timeout=timeout_s,
        )
        return reply.ok and "result" in reply.json()
    except (requests.RequestException, ValueError):
        return False


@dataclass
class GanacheNode:
    """One ganache process on 127.0.0.1 with a fixed mnemonic, chain id 8996 and london rules."""

    db_path: Path
    port: int = 0
    mnemonic: str = DEV_MNEMONIC
    chain_id: int = DEV_CHAIN_ID
    accounts: int = 10
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_timeout_s: float = 60.0) -> str:
        """Start the node (a free port is picked if none was given); return its RPC URL."""
        if self.running:
            return self.url
        if not self.port:
            self.port = free_port()
        self.db_path.mkdir(parents=True, exist_ok=True)
        node = shutil.which("node")
        if node is None:
            raise NodeError("node (Node.js 18+) is not on PATH")
        cmd = [
            str(ganache_binary()),
            "--server.host=127.0.0.1",
            f"--server.port={self.port}",
            f"--chain.chainId={self.chain_id}",
            f"--chain.networkId={self.chain_id}",
            "--chain.hardfork=london",
            f"--wallet.mnemonic={self.mnemonic}",
            f"--wallet.totalAccounts={self.accounts}",
            f"--database.dbPath={self.db_path}",
            "--logging.quiet",
        ]
        log_file = open(self.log_path or self.db_path.parent / "ganache.log", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NodeError(f"ganache exited with {self._proc.returncode}; see its log")
            if rpc_ready(self.url):
                log.info("ganache ready at %s (db %s)", self.url, self.db_path)
                return self.url
            time.sleep(0.1)
        self.stop()
        raise NodeError(f"ganache did not answer on {self.url} within {ready_timeout_s}s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the node gracefully (it flushes its database), killing it if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
        log.info("ganache on port %s stopped", self.port)

    def __enter__(self) -> GanacheNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class NodeSettings:
    """`python -m marketplace.ocean.node`: the chain's port; its state goes in the data dir."""

    port: int = field(default=8545, metadata=flag("JSON-RPC port", env="CHAIN_PORT"))
    ocean: OceanSettings = field(default_factory=OceanSettings, metadata=nested(""))


def main(argv: list[str] | None = None) -> None:
    """`python -m marketplace.ocean.node`: run the project's chain in the foreground."""
    settings = parse_settings(
        NodeSettings, argv, prog="python -m marketplace.ocean.node", description=main.__doc__
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    node = GanacheNode(db_path=settings.ocean.data_dir / "chain", port=settings.port)
    node.start()
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and node.running:
            time.sleep(0.5)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
