"""Benchmark: the doctors' live event stream (``GET /api/events``) on a real marketplace process.

Starts ``python -m marketplace.service`` on SQLite in a temporary folder and, for 0, 10 and 50
doctors each holding a stream open, measures:

* how long a claimable case the clinic opens takes to reach every open stream (intake writes
  the store; the streams see it at their next look, every ``--events-poll-s``; cases arrive
  at random points of that wait);
* how long a settling vote takes to reach the voter's stream (a vote wakes the streams);
* ``GET /api/pool`` latency for one more doctor while the streams are open (the cost they put
  on the service), against the same with no stream open.

Prints a markdown table and saves JSON (``bench/events.json``, ``bench/events.md``).

    .venv/bin/python scripts/bench_events.py [--streams 0 10 50 --poll-s 2 --out bench/events.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.messaging import generate_key  # noqa: E402
from infra.net import free_port  # noqa: E402
from marketplace import doctors, intake  # noqa: E402
from marketplace.domain.consensus import PanelRule  # noqa: E402
from marketplace.domain.policy import MarketPolicy  # noqa: E402
from marketplace.messages import CaseOpened  # noqa: E402
from marketplace.storage import make_engine, make_sessionmaker, migrate  # noqa: E402

#: One-seat panels, so one vote settles a case (the service gets the same from its flags).
SOLO = MarketPolicy(panel=PanelRule(panel_size=1, quorum=1, widen_step=1, max_panel=1))


class Stream:
    """One doctor's open stream; records when each event arrived (monotonic seconds)."""

    def __init__(self, url: str, token: str) -> None:
        self.arrivals: list[tuple[float, str, Any]] = []
        self.reply = requests.get(
            f"{url}/api/events", headers={"Authorization": f"Bearer {token}"}, stream=True
        )
        self.reply.raise_for_status()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        name = ""
        try:
            for line in self.reply.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    self.arrivals.append((time.monotonic(), name, json.loads(line[5:])))
        except (requests.RequestException, AttributeError, ValueError):
            pass

    def first_after(self, since: float, check: Any, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, name, data in list(self.arrivals):
                if at >= since and check(name, data):
                    return at
            time.sleep(0.002)
        raise TimeoutError("event never arrived")

    def close(self) -> None:
        self.reply.close()


def open_case(sessions: Any, confidence: float = 0.95) -> str:
    """A case as the clinic's message opens it, at a bounty every new doctor's tier admits."""
    now = datetime.now(UTC)
    message = CaseOpened(
        case_id=uuid.uuid4().hex,
        submitted_at=now,
        predicted_at=now,
        model_label="tumor",
        confidence=confidence,
        backbone="lenet",
        model_sha256="ab" * 32,
    )
    with sessions() as session:
        assert intake.open_case_now(session, message, now=now, policy=SOLO)
    return message.case_id


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    url: str, sessions: Any, n_streams: int, rounds: int, poll_s: float, rng: random.Random
) -> dict[str, Any]:
    with sessions() as session:
        tokens = [
            doctors.create_doctor(
                session, display_name=f"Dr {i}", specialty="neuroradiology", now=datetime.now(UTC)
            )[1]
            for i in range(n_streams + 1)
        ]
    probe, streamers = tokens[0], tokens[1:]
    streams = [Stream(url, t) for t in streamers]
    try:
        for s in streams:
            s.first_after(0, lambda name, _: name == "ready")
        new_case_ms: list[float] = []
        settle_ms: list[float] = []
        for _ in range(rounds if streams else 0):
            time.sleep(rng.uniform(0, poll_s))  # cases arrive at any point of the streams' wait
            opened_at = time.monotonic()
            case_id = open_case(sessions)
            seen = [
                s.first_after(
                    opened_at,
                    lambda n, d, c=case_id: (
                        n == "pool" and any(x["case_id"] == c for x in d["cases"])
                    ),
                )
                for s in streams
            ]
            new_case_ms.extend((at - opened_at) * 1000 for at in seen)
            voter = streams[0]
            auth = {"Authorization": f"Bearer {streamers[0]}"}
            requests.post(f"{url}/api/cases/{case_id}/claim", headers=auth).raise_for_status()
            voted_at = time.monotonic()
            vote = {"case_id": case_id, "label": "tumor"}
            requests.post(f"{url}/decision", headers=auth, json=vote).raise_for_status()
            at = voter.first_after(
                voted_at,
                lambda n, d, c=case_id: (
                    n == "history" and any(x["case_id"] == c for x in d["settled"])
                ),
            )
            settle_ms.append((at - voted_at) * 1000)
        pool_ms = []
        auth = {"Authorization": f"Bearer {probe}"}
        for _ in range(100):
            start = time.perf_counter()
            requests.get(f"{url}/api/pool", headers=auth).raise_for_status()
            pool_ms.append((time.perf_counter() - start) * 1000)
    finally:
        for s in streams:
            s.close()

    def summary(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {
            "median": round(statistics.median(values), 1),
            "p95": round(percentile(values, 0.95), 1),
            "max": round(max(values), 1),
        }

    return {
        "streams": n_streams,
        "new_case_to_every_stream_ms": summary(new_case_ms),
        "settling_vote_to_voter_stream_ms": summary(settle_ms),
        "pool_request_ms": summary(pool_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[0, 10, 50])
    parser.add_argument("--poll-s", type=float, default=2.0, help="the service's --events-poll-s")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "events.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'market.sqlite3'}"
        migrate(db_url)
        engine = make_engine(db_url)
        sessions = make_sessionmaker(engine)
        port = free_port()
        env = os.environ | {
            "CRYPTO_DOCTOR_MARKET_KEY": generate_key(),
            "CRYPTO_DOCTOR_DB_URL": db_url,
        }
        service = subprocess.Popen(
            [
                sys.executable, "-m", "marketplace.service", "--port", str(port),
                "--events-poll-s", str(args.poll_s), "--panel-size", "1", "--quorum", "1",
                "--widen-step", "1", "--max-panel", "1", "--escalation-interval-s", "3600",
                "--max-open-claims", "1000", "--claim-rate-limit", "100000",
            ],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{url}/healthz", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or service.poll() is not None:
                    raise RuntimeError("the marketplace did not start")
                time.sleep(0.1)
            load_before = os.getloadavg()
            rng = random.Random(7)
            results = [
                measure(url, sessions, n, args.rounds, args.poll_s, rng) for n in args.streams
            ]
            load_after = os.getloadavg()
        finally:
            service.terminate()
            service.wait(30)
            engine.dispose()

    report = {
        "settings": {"events_poll_s": args.poll_s, "rounds": args.rounds, "store": "SQLite"},
        "cpus": os.cpu_count(),
        "load_1_5_15_before": [round(x, 2) for x in load_before],
        "load_1_5_15_after": [round(x, 2) for x in load_after],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    def cell(s: dict[str, float] | None) -> str:
        return "–" if s is None else f"{s['median']:.0f} / {s['p95']:.0f}"

    lines = [
        "| open streams | new case → every stream, ms (median / p95) | settling vote → "
        "voter's stream, ms | `GET /api/pool`, ms |",
        "|---|---|---|---|",
        *[
            f"| {r['streams']} | {cell(r['new_case_to_every_stream_ms'])} | "
            f"{cell(r['settling_vote_to_voter_stream_ms'])} | {cell(r['pool_request_ms'])} |"
            for r in results
        ],
        "",
        f"`--events-poll-s {args.poll_s}`, SQLite, {os.cpu_count()} CPUs, load (1/5/15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after.",
    ]
    table = "\n".join(lines)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
