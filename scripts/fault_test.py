"""Fault test: the load test's traffic while things break, then the same audit.

    .venv/bin/python scripts/fault_test.py [--patients 200] [--doctors 50] [--deadline-s 540]

Same system and clients as scripts/load_test.py, but on a PostgreSQL server and a chain node
that this script owns (both on 127.0.0.1, ephemeral ports, temp dirs), so it can break them.
During the load, in order:

1. SIGKILL party 1 (the supervisor restarts both parties; queued cases run again);
2. restart PostgreSQL (``pg_ctl restart -m fast``: every open database connection drops);
3. stop the chain for ``--chain-down-s`` seconds and start it again on the same state
   (the publisher keeps rows queued and retries).

Afterwards the same "nothing lost, nothing doubled" audit as the load test runs; exit 1 on any
lost or doubled record. Cases stored whose 202 never reached the client (the connection
died first) are reported, not counted as lost: no patient was told they exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from load.clients import create_doctors  # noqa: E402  (needs the paths above)
from load.report import report  # noqa: E402
from load.scenario import parse_args, prepare, run_and_audit, setup_logging  # noqa: E402
from load.system import System, wait_ready  # noqa: E402

log = logging.getLogger("fault_test")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class Postgres:
    """A throwaway PostgreSQL 15 cluster (run as the ``postgres`` user when we are root)."""

    root: Path
    port: int

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/crypto_doctor"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        subprocess.run(
            self._as_owner([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust",
                            "-U", "postgres", "--no-sync"]),
            check=True, capture_output=True,
        )  # fmt: skip
        self.ctl("start")
        subprocess.run(
            self._as_owner([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "crypto_doctor"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def ctl(self, action: str, *extra: str) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        subprocess.run(
            self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-w",
                            "-l", str(self.root / "postgres.log"), "-o", opts, action, *extra]),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self.ctl("stop", "-m", "fast")


class Faults:
    """The fault schedule, run in a thread beside the load; records what happened when."""

    def __init__(self, system, pg: Postgres, chain, chain_down_s: float) -> None:
        self.system, self.pg, self.chain, self.chain_down_s = system, pg, chain, chain_down_s
        self.events: list[dict] = []
        self.t0 = time.monotonic()

    def note(self, event: str) -> None:
        entry = {"t_s": round(time.monotonic() - self.t0, 1), "event": event}
        self.events.append(entry)
        log.info("fault schedule: %s", event)

    def wait_parties(self, old_pid: int, timeout: float = 180) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.system.patient_url + "/healthz", timeout=5) as r:
                    health = json.loads(r.read())
                if health["mpc_ready"] and health["pid"] != old_pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError("parties did not come back")

    def __call__(self) -> None:
        time.sleep(4)
        party0 = self.system.pid_of("party 0")
        party1 = self.system.pid_of("party 1")
        os.kill(party1, signal.SIGKILL)
        self.note(f"SIGKILL party 1 (pid {party1})")
        self.wait_parties(party0)
        self.note("both parties back (MPC ready)")
        time.sleep(3)
        self.note("restarting PostgreSQL (all connections drop)")
        self.pg.ctl("restart", "-m", "fast")
        self.note("PostgreSQL back")
        time.sleep(3)
        self.chain.stop()
        self.note(f"chain stopped for {self.chain_down_s:.0f} s")
        time.sleep(self.chain_down_s)
        self.chain.start()
        self.note("chain started again (same state)")


def main(argv: list[str] | None = None) -> int:
    from infra.net import free_port
    from marketplace.ocean.node import GanacheNode

    setup_logging("fault_test")
    args = parse_args(argv, description=__doc__.splitlines()[0])
    if not (PG_BIN / "initdb").exists():
        print("[fault_test] PostgreSQL 15 is not installed (scripts/setup installs it as root)")
        return 2
    started = time.monotonic()
    deadline = started + args.deadline_s
    work, images = prepare(args, prefix="crypto-doctor-fault-")
    pg = Postgres(Path(tempfile.mkdtemp(prefix="crypto-doctor-pg-")), free_port())
    chain = GanacheNode(db_path=work / "chain", port=free_port(), log_path=work / "ganache.log")
    system = None
    code = 1
    try:
        pg.init()
        chain.start()
        system = System(work, args.model_path, db_url=pg.url, rpc_url=chain.url)
        system.start()
        asyncio.run(wait_ready(system, deadline))
        log.info(
            "system ready after %.1f s (PostgreSQL, external chain)", time.monotonic() - started
        )
        tokens = create_doctors(system.db_url, system.clinic_db_url, args.doctors)
        faults = Faults(system, pg, chain, args.chain_down_s)
        notes: list[str] = []
        run = run_and_audit(system, images, tokens, args, deadline, during=faults, notes=notes)
        extra = run.extra(
            args,
            faults=faults.events,
            notes=notes,
            party_restarts=system.log_text().count("restarting both parties"),
        )
        code = report("fault_test", run.figures, run.problems, extra, args.out)
        if code == 0 and len(run.stats.accepted) < args.patients:
            print(f"[fault_test] only {len(run.stats.accepted)} of {args.patients} got a 202")
            code = 2
    finally:
        rc = system.stop() if system else None
        chain.stop()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        log.info("stopped (system exit %s); total %.1f s", rc, time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
