"""Benchmark: several party pairs taking cases from one PostgreSQL queue, under network latency.

    sudo .venv/bin/python scripts/bench_scaleout.py [--rtt-ms 0,10,50] [--pairs 1,2,4]
        [--processes 1,2,4] [--cases 128] [--max-batch 8]

Needs root, ``ip netns``, ``tc`` or ``nft`` (as ``scripts/bench_multihost.py``, whose two
namespaces it reuses: ``scripts/twohosts.py``) and Debian's PostgreSQL 15 (it starts a
throwaway cluster with ``tests/marketplace/pg_server.sh``). Every party 0 (the clinic's side)
runs in namespace 0 and every party 1 (the model owner's) in namespace 1, as the real
``python -m predictor --rank 0|1 --pair-id P --pair-process K`` processes, so each MPC round
crosses the delayed link; the clinic's store is reached over PostgreSQL's Unix socket (the
database is not the link being delayed).

For each RTT, and each configuration - N pairs of one process each, and one pair of K
processes - it enqueues a burst of ``--cases`` cases at once directly in the clinic's store
(held, images written, then released in one statement: the offered load is the whole burst at
t=0), after a warm-up batch per process, and reports images/s (cases / time until the last is
recorded) and p50/p95 latency (release -> prediction recorded). Writes
``docs/bench/scaleout.json`` and ``docs/bench/scaleout.md``. Not a test: it asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.twohosts import ADDR, TwoHosts  # noqa: E402

PG_SERVER = ROOT / "tests" / "marketplace" / "pg_server.sh"
SAMPLE = ROOT / "samples" / "Y22.jpg"
MODEL = ROOT / "models" / "lenet.pth"
PORT = 29411  # rendezvous ports count up from here (outside mpc_tunnel's fenced range)
READY = "encrypted lenet model ready"


@dataclass(frozen=True)
class Config:
    pairs: int
    processes: int

    @property
    def sessions(self) -> int:
        return self.pairs * self.processes


def log(message: str) -> None:
    print(f"[bench_scaleout] {message}", flush=True)


def start_postgres() -> tuple[str, str]:
    """A throwaway cluster; returns (Unix-socket URL, cluster dir)."""
    out = subprocess.run([str(PG_SERVER), "start"], check=True, capture_output=True, text=True)
    found = dict(
        line.removeprefix("export ").split("=", 1) for line in out.stdout.split("\n") if "=" in line
    )
    tcp, folder = found["CRYPTO_DOCTOR_TEST_PG_URL"], found["CRYPTO_DOCTOR_TEST_PG_DIR"]
    port = tcp.rsplit(":", 1)[1].split("/")[0]
    # Unix sockets cross network namespaces (they live in the file system).
    return f"postgresql://postgres@/postgres?host={folder}&port={port}", folder


class Store:
    """The clinic's store as the benchmark fills and reads it."""

    def __init__(self, url: str, data_dir: Path) -> None:
        from marketplace.storage import make_engine, make_sessionmaker
        from predictor.clinic.store import migrate_clinic

        migrate_clinic(url)
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)
        self.images = data_dir / "images"
        self.images.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text("delete from outbox"))
            conn.execute(text("delete from patient_cases"))
        for path in self.images.glob("*.jpg"):
            path.unlink()

    def enqueue(self, n: int) -> tuple[list[str], float]:
        """``n`` cases made claimable in one statement; their ids and the release time."""
        from predictor.clinic import cases
        from predictor.clinic import queue as store

        now = datetime.datetime.now(datetime.UTC)
        with self.sessions() as session:
            ids = [
                cases.create_case(session, patient_token_hash=f"{i:064x}", now=now)
                for i in range(n)
            ]
        for case_id in ids:
            shutil.copyfile(SAMPLE, self.images / f"{case_id}.jpg")
        released = time.time()
        with self.sessions() as session:
            store.release_uploads(session, ids)
        return ids, released

    def predicted(self, ids: list[str]) -> list[float]:
        """Epoch times at which those of ``ids`` already recorded were recorded."""
        from sqlalchemy import select

        from predictor.clinic.models import PatientCase

        with self.sessions() as session:
            rows = session.scalars(
                select(PatientCase.predicted_at).where(
                    PatientCase.id.in_(ids), PatientCase.predicted_at.is_not(None)
                )
            )
            return [t.timestamp() for t in rows if t is not None]


class Sessions:
    """N x K MPC sessions: every party 0 in namespace 0, every party 1 in namespace 1."""

    def __init__(
        self,
        hosts: TwoHosts,
        config: Config,
        db_url: str,
        data_dir: Path,
        work: Path,
        port: int,
        max_batch: int,
    ) -> None:
        self.logs: list[Path] = []
        self.procs: list[tuple[int, subprocess.Popen]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_DOCTOR_")}
        env["PYTHONUNBUFFERED"] = "1"
        for pair in range(1, config.pairs + 1):  # pair 0 would be the patient API: not measured
            for process in range(config.processes):
                port += 1
                for rank in (0, 1):
                    argv = [
                        "ip", "netns", "exec", hosts.ns[rank], sys.executable, "-m", "predictor",
                        "--rank", str(rank), "--pair-id", str(pair),
                        "--pair-process", str(process), "--master-addr", ADDR[0],
                        "--master-port", str(port), "--mpc-interface", hosts.dev[rank],
                    ]  # fmt: skip
                    child_env = dict(env)
                    if rank == 0:
                        argv += ["--data-dir", str(data_dir), "--max-batch", str(max_batch)]
                        child_env["CRYPTO_DOCTOR_CLINIC_DB_URL"] = db_url
                    else:
                        # no chain in the namespaces: the model is served unattested
                        argv += ["--model-path", str(MODEL), "--allow-unattested"]
                    path = work / f"pair{pair}.{process}-party{rank}.log"
                    with open(path, "wb") as out:
                        proc = subprocess.Popen(
                            argv, cwd=ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT
                        )
                    self.procs.append((rank, proc))
                    if rank == 0:
                        self.logs.append(path)

    def tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-1500:] for p in self.logs)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(READY in p.read_text(errors="replace") for p in self.logs):
            if any(proc.poll() is not None for _, proc in self.procs):
                raise RuntimeError("a party exited while starting:\n" + self.tail())
            if time.monotonic() > deadline:
                raise RuntimeError("parties did not start in time:\n" + self.tail())
            time.sleep(0.5)

    def stop(self) -> None:
        for rank in (0, 1):  # party 0 first: it tells its party 1 to stop
            for r, proc in self.procs:
                if r == rank and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for r, proc in self.procs:
                if r == rank:
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def drain(store: Store, ids: list[str], timeout: float, sessions: Sessions) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        done = store.predicted(ids)
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(done)}/{len(ids)} predicted in time:\n" + sessions.tail())
        time.sleep(0.1)


def measure(
    hosts: TwoHosts, store: Store, db_url: str, config: Config, args: argparse.Namespace, port: int
) -> dict:
    store.reset()
    work = Path(tempfile.mkdtemp(prefix="scaleout-", dir=args.work))
    # every party 0 reads the clinic's one image folder
    sessions = Sessions(hosts, config, db_url, store.images.parent, work, port, args.max_batch)
    try:
        started = time.monotonic()
        sessions.wait_ready(args.timeout_s)
        startup = time.monotonic() - started
        warm, _ = store.enqueue(config.sessions * args.max_batch)
        drain(store, warm, args.timeout_s, sessions)
        load_before = os.getloadavg()[0]
        ids, released = store.enqueue(args.cases)
        done = drain(store, ids, args.timeout_s, sessions)
        latencies = sorted(t - released for t in done)
        return {
            "pairs": config.pairs,
            "processes_per_pair": config.processes,
            "sessions": config.sessions,
            "cases": args.cases,
            "max_batch": args.max_batch,
            "images_per_s": len(ids) / max(latencies[-1], 1e-9),
            "p50_s": statistics.median(latencies),
            "p95_s": latencies[max(0, int(round(0.95 * len(latencies))) - 1)],
            "startup_s": startup,
            "load_1min": load_before,
        }
    finally:
        sessions.stop()
        shutil.rmtree(work, ignore_errors=True)


def _rtt(rtt: float | None) -> str:
    return "veth" if rtt is None else f"{rtt:g}"


def markdown(rows: list[dict], machine: str, mode: str, when: str, cases: int, batch: int) -> str:
    lines = [
        f"Machine: {machine}. One run started {when}. Party 0s in one network namespace, "
        f"party 1s in another, joined by a veth pair; latency added by {mode} (RTT/2 each way). "
        f"LeNet (seed weights), TFP triples, 1 torch thread per party, max batch {batch}; "
        f"offered load: a burst of {cases} cases released at once into the clinic's "
        "PostgreSQL queue after a warm-up batch per process; images/s = cases / time until "
        "the last prediction is recorded; latency = release -> prediction recorded. "
        "'vs 1' = images/s against 1 pair x 1 process at the same RTT, same run. "
        "Load = 1-minute load average when the burst was released.",
        "",
        "| RTT set (ms) | measured RTT (ms) | pairs | processes/pair | images/s | vs 1 | "
        "p50 s | p95 s | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(
            (b for b in rows if b["rtt_ms"] == r["rtt_ms"] and b["sessions"] == 1),
            None,
        )
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else ""
        lines.append(
            f"| {_rtt(r['rtt_ms'])} | {r['ping_ms']:.1f} | {r['pairs']} | "
            f"{r['processes_per_pair']} | {r['images_per_s']:.1f} | {ratio} | "
            f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['load_1min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def configs(pairs: list[int], processes: list[int]) -> list[Config]:
    """N pairs of one process, then one pair of K processes (the baseline once)."""
    found = [Config(n, 1) for n in pairs] + [Config(1, k) for k in processes]
    return list(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", default="0,10,50")
    parser.add_argument("--pairs", default="1,2,4")
    parser.add_argument("--processes", default="1,2,4", help="processes per pair (1 pair)")
    parser.add_argument("--cases", type=int, default=128, help="cases in the measured burst")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("[bench_scaleout] needs root (ip netns, tc/nft)", file=sys.stderr)
        return 2
    rtts = [float(x) for x in args.rtt_ms.split(",")]
    plan = configs(
        [int(x) for x in args.pairs.split(",")], [int(x) for x in args.processes.split(",")]
    )
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    scratch = Path(tempfile.mkdtemp(prefix="crypto-doctor-scaleout-"))
    args.work = args.work or scratch
    hosts = TwoHosts()
    pg_dir = ""
    rows: list[dict] = []
    try:
        db_url, pg_dir = start_postgres()
        store = Store(db_url, scratch / "clinic")
        hosts.open()
        log(f"namespaces {hosts.ns}; latency by {hosts.mode}; PostgreSQL at {pg_dir}")
        port = PORT
        for rtt in rtts:
            hosts.set_rtt(rtt)
            ping = hosts.ping_ms()
            for config in plan:
                row = {"rtt_ms": rtt, "ping_ms": ping, "latency_by": hosts.mode}
                row |= measure(hosts, store, db_url, config, args, port)
                port += config.sessions + 1
                rows.append(row)
                log(
                    f"RTT {_rtt(rtt):>3} ms (measured {ping:5.1f}): {config.pairs} pair(s) x "
                    f"{config.processes} process(es): {row['images_per_s']:6.1f} images/s, "
                    f"p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s "
                    f"(load {row['load_1min']:.1f}, start-up {row['startup_s']:.0f} s)"
                )
    finally:
        hosts.close()
        if pg_dir:
            subprocess.run([str(PG_SERVER), "stop", pg_dir], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "measured": when, "latency_by": hosts.mode, "rows": rows}
    (args.out_dir / "scaleout.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, machine, hosts.mode, when, args.cases, args.max_batch)
    (args.out_dir / "scaleout.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
