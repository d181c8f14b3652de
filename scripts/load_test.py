"""Load test: many patients and doctors at once against the real system, then an audit.

    .venv/bin/python scripts/load_test.py [--patients 200] [--doctors 50] [--deadline-s 480]

Starts ``python -m predictor`` (two MPC parties on LeNet, doctor service, local chain, Ocean
publisher and download service) on 127.0.0.1 and ephemeral ports, then runs N patients
(each POSTs one slice and polls its case) and M doctors (pool -> claim -> signed image ->
sealed vote, 5 % of votes wrong so some panels widen) concurrently over HTTP. It prints
images/s and p50/p95 of POST->prediction and decision->settlement, then audits the database,
the Ocean publisher's state, the published CSV and the on-chain digest:

- every accepted case (HTTP 202) exists exactly once, and nothing else was stored;
- every case was escrowed exactly once; every settled case paid out exactly once, exactly its
  escrow (fund + escalations), to its agreeing doctors; the ledger balances;
- every settled case has exactly one research row, published exactly once (or held back by
  k-anonymity, reported), and the CSV whose digest is on chain holds exactly those rows.

Exits 1 on any lost or doubled record, 2 when the run did not finish within the deadline.
Bounded: a fixed number of patients and doctors, a wall-clock deadline, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("load_test")
DEFAULT_K = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class System:
    """The system as users start it, on ephemeral ports, state in ``work``."""

    work: Path
    model: Path
    db_url: str = ""
    rpc_url: str = ""  # external chain (the fault test's); empty: the supervisor starts one
    publish_every_s: float = 2.0
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.ports = {name: free_port() for name in ("patient", "doctor", "chain", "ocean")}
        self.db_url = self.db_url or f"sqlite:///{self.work / 'crypto-doctor.sqlite3'}"
        self.log_path = self.work / "system.log"

    patient_url = property(lambda self: f"http://127.0.0.1:{self.ports['patient']}")
    doctor_url = property(lambda self: f"http://127.0.0.1:{self.ports['doctor']}")
    service_url = property(lambda self: f"http://127.0.0.1:{self.ports['ocean']}")
    ocean_dir = property(lambda self: self.work / "ocean")

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "predictor",
            "--patient-port", str(self.ports["patient"]), "--doctor-port", str(self.ports["doctor"]),
            "--chain-port", str(self.ports["chain"]), "--ocean-port", str(self.ports["ocean"]),
            "--db-url", self.db_url, "--data-dir", str(self.work / "party0"),
            "--ocean-data-dir", str(self.ocean_dir), "--model-path", str(self.model),
            "--publish-every-s", str(self.publish_every_s), "--batch-wait-ms", "20",
        ]  # fmt: skip
        if self.rpc_url:
            argv += ["--ocean-rpc-url", self.rpc_url]
        return argv

    def start(self) -> None:
        env = {**os.environ, "CRYPTO_DOCTOR_ESCALATION_INTERVAL_S": "5"}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pid_of(self, name: str) -> int:
        """Latest pid of a supervised child, from the supervisor's log (``party 1``, ``chain``)."""
        pids = re.findall(rf"{name} started \(pid (\d+)\)", self.log_text())
        if not pids:
            raise RuntimeError(f"no '{name} started' line in {self.log_path}")
        return int(pids[-1])

    def alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"system exited ({self.process.returncode}); see {self.log_path}")


async def get_json(session: aiohttp.ClientSession, url: str, **kw) -> tuple[int, dict | None]:
    try:
        async with session.get(url, **kw) as reply:
            body = await reply.json(content_type=None)
            return reply.status, body
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError):
        return 0, None


async def wait_ready(system: System, deadline: float, chain_needed: bool = True) -> dict:
    """Both parties MPC-ready, download service up, Ocean contracts deployed."""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            system.alive()
            status, health = await get_json(session, system.patient_url + "/healthz")
            ocean_ok = not chain_needed or (
                (system.ocean_dir / "address.json").exists()
                and (await get_json(session, system.service_url + "/"))[0] == 200
            )
            if status == 200 and health and health.get("mpc_ready") and ocean_ok:
                return health
            await asyncio.sleep(0.5)
    raise TimeoutError("system not ready before the deadline")


@dataclass
class Stats:
    accepted: dict[str, dict] = field(default_factory=dict)  # case_id -> patient record
    rejected: collections.Counter = field(default_factory=collections.Counter)
    post_retries: int = 0
    votes: int = 0
    vote_errors: collections.Counter = field(default_factory=collections.Counter)
    claim_conflicts: int = 0
    last_vote_sent: dict[str, float] = field(default_factory=dict)  # case -> wall clock
    truth: dict[str, str] = field(default_factory=dict)


def make_images(work: Path, count: int) -> list[tuple[bytes, str, str]]:
    """``count`` distinct generated slices (bytes, filename, truth), from the offline generator."""
    from training.synthetic import generate_dataset

    root = generate_dataset(work / "mri", seed=5, train=2, eval=count)
    images = []
    for label, truth in (("yes", "tumor"), ("no", "no_tumor")):
        for path in sorted((root / "eval" / label).iterdir()):
            images.append((path.read_bytes(), path.name, truth))
    return images


async def patient(
    i: int,
    system: System,
    session: aiohttp.ClientSession,
    image: tuple[bytes, str, str],
    stats: Stats,
    stop_at: float,
) -> None:
    """POST once (retrying only when no answer came back), then poll the case."""
    data, name, truth = image
    answer = None
    while answer is None and time.monotonic() < stop_at:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        posted = time.time()
        try:
            async with session.post(system.patient_url + "/image", data=form) as reply:
                body = await reply.json(content_type=None)
                if reply.status == 202:
                    answer = body
                elif reply.status >= 500:
                    stats.post_retries += 1  # not accepted: nothing to lose, try again
                    await asyncio.sleep(1)
                else:
                    stats.rejected[reply.status] += 1
                    return
        except (TimeoutError, aiohttp.ClientError, ValueError):
            stats.post_retries += 1
            await asyncio.sleep(1)
    if answer is None:
        return
    case_id = answer["case_id"]
    record = {"posted": posted, "token": answer["patient_token"], "truth": truth}
    stats.accepted[case_id] = record
    stats.truth[case_id] = truth
    headers = {"Authorization": f"Bearer {answer['patient_token']}"}
    url = system.patient_url + answer["status_url"]
    while time.monotonic() < stop_at:
        status, view = await get_json(session, url, headers=headers)
        if status == 200 and view:
            if view["prediction"] is not None and "seen_prediction" not in record:
                record["seen_prediction"] = time.time()
            if view["status"] in ("settled", "failed"):
                record["final"] = view
                return
        await asyncio.sleep(2.0 + random.random())


async def doctor(
    token: str,
    system: System,
    session: aiohttp.ClientSession,
    stats: Stats,
    rng: random.Random,
    done: Callable[[], bool],
    stop_at: float,
    error_rate: float,
) -> None:
    """Like a doctor on the page: finish my claimed cases first, else pool -> claim; then look
    at the signed image from party 0 and cast a sealed vote. Until the work runs out."""
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < stop_at and not done():
        try:
            case_id, image_url = await next_case(system, session, headers, stats, rng)
            if case_id is None:
                await asyncio.sleep(0.5 + rng.random())
                continue
            await review(system, session, headers, stats, rng, case_id, image_url, error_rate)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            stats.vote_errors["connection"] += 1  # a party restarting: come back to it later
            await asyncio.sleep(1)


async def next_case(system, session, headers, stats, rng) -> tuple[str | None, str | None]:
    """An unvoted claim of mine (a claim whose answer or vote was lost), else a new claim."""
    status, mine = await get_json(session, system.doctor_url + "/api/claims", headers=headers)
    if status != 200:
        return None, None
    for card in mine["cases"]:
        if not card["voted"] and card["case_id"] in stats.truth:
            url = f"{system.doctor_url}/api/cases/{card['case_id']}/image-link"
            status, link = await get_json(session, url, headers=headers)
            return (card["case_id"], link["url"]) if status == 200 else (None, None)
    status, pool = await get_json(session, system.doctor_url + "/api/pool", headers=headers)
    cases = [c for c in (pool or {}).get("cases", []) if c["case_id"] in stats.truth]
    if status != 200 or not cases:
        return None, None
    case_id = rng.choice(cases[:10])["case_id"]
    url = f"{system.doctor_url}/api/cases/{case_id}/claim"
    async with session.post(url, headers=headers, json={}) as reply:
        card = await reply.json(content_type=None)
        if reply.status != 201:
            stats.claim_conflicts += 1
            return None, None
    return case_id, card["image_url"]


async def review(system, session, headers, stats, rng, case_id, image_url, error_rate) -> None:
    async with session.get(image_url) as reply:
        await reply.read()
        if reply.status != 200:
            stats.vote_errors[f"image {reply.status}"] += 1
            return
    truth = stats.truth[case_id]
    wrong = "no_tumor" if truth == "tumor" else "tumor"
    label = wrong if rng.random() < error_rate else truth
    sent = time.time()
    async with session.post(
        system.doctor_url + "/decision",
        headers=headers,
        json={"case_id": case_id, "label": label},
    ) as reply:
        await reply.read()
        if reply.status == 201:
            stats.votes += 1
            stats.last_vote_sent[case_id] = max(sent, stats.last_vote_sent.get(case_id, 0.0))
        else:
            stats.vote_errors[reply.status] += 1


def create_doctors(db_url: str, count: int) -> list[str]:
    """Doctors with reputation 200 (every bounty tier), through the doctors module's own
    ``create_doctor`` - what ``python -m marketplace.doctors create`` calls, without paying
    50 interpreter start-ups."""
    from marketplace.doctors import create_doctor
    from marketplace.storage import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    tokens = []
    with make_sessionmaker(engine)() as session:
        for n in range(count):
            _id, token = create_doctor(
                session,
                display_name=f"Load doctor {n}",
                specialty="neuroradiology",
                reputation=200,
                now=datetime.now(UTC),
            )
            tokens.append(token)
    engine.dispose()
    return tokens


def all_settled(db_url: str, case_ids: set[str]) -> bool:
    from sqlalchemy import func, select

    from marketplace.storage import make_engine
    from marketplace.storage.models import Case

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            open_cases = conn.scalar(
                select(func.count()).where(Case.id.in_(case_ids), Case.status != "settled")
            )
    finally:
        engine.dispose()
    return open_cases == 0


async def run_load(
    system: System,
    images: list[tuple[bytes, str, str]],
    tokens: list[str],
    patients: int,
    stop_at: float,
    error_rate: float,
    during: Callable[[], None] | None = None,
) -> Stats:
    """All patients and doctors at once; returns when every accepted case is settled."""
    stats = Stats()
    rng = random.Random(1)
    finished = {"flag": False}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        patient_tasks = [
            asyncio.create_task(
                patient(i, system, session, images[i % len(images)], stats, stop_at)
            )
            for i in range(patients)
        ]
        doctor_tasks = [
            asyncio.create_task(
                doctor(
                    t,
                    system,
                    session,
                    stats,
                    random.Random(rng.random()),
                    lambda: finished["flag"],
                    stop_at,
                    error_rate,
                )
            )  # fmt: skip
            for t in tokens
        ]
        fault_task = asyncio.create_task(asyncio.to_thread(during)) if during else None
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop_at:
            await asyncio.sleep(2)
            if all(t.done() for t in patient_tasks):
                settled = await loop.run_in_executor(
                    None, all_settled, system.db_url, set(stats.accepted)
                )
                if settled:
                    break
        finished["flag"] = True
        await asyncio.gather(*doctor_tasks, return_exceptions=True)
        for t in patient_tasks:
            t.cancel()
        await asyncio.gather(*patient_tasks, return_exceptions=True)
        if fault_task is not None:
            await fault_task
    return stats


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(system: System, stats: Stats) -> dict:
    """Throughput and latencies, from the clients' clocks and the database's timestamps."""
    from sqlalchemy import select

    from marketplace.storage import make_engine
    from marketplace.storage.models import Case

    engine = make_engine(system.db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Case.id, Case.predicted_at, Case.settled_at).where(
                Case.id.in_(list(stats.accepted))
            )
        ).all()
    engine.dispose()
    predict, settle, predicted_times = [], [], []
    for case_id, predicted_at, settled_at in rows:
        posted = stats.accepted[case_id]["posted"]
        if predicted_at is not None:
            predict.append(predicted_at.timestamp() - posted)
            predicted_times.append(predicted_at.timestamp())
        if settled_at is not None and case_id in stats.last_vote_sent:
            settle.append(max(0.0, settled_at.timestamp() - stats.last_vote_sent[case_id]))
    first_post = min((r["posted"] for r in stats.accepted.values()), default=0.0)
    span = (max(predicted_times) - first_post) if predicted_times else float("nan")
    return {
        "accepted": len(stats.accepted),
        "predicted": len(predict),
        "settled": sum(1 for *_, s in rows if s is not None),
        "images_per_s": round(len(predicted_times) / span, 2) if span and span > 0 else None,
        "post_to_prediction_s": {
            "p50": round(percentile(predict, 0.5), 2),
            "p95": round(percentile(predict, 0.95), 2),
            "max": round(max(predict, default=float("nan")), 2),
        },
        "decision_to_settlement_s": {
            "p50": round(percentile(settle, 0.5), 3),
            "p95": round(percentile(settle, 0.95), 3),
            "max": round(max(settle, default=float("nan")), 3),
        },
        "votes": stats.votes,
        "claim_conflicts": stats.claim_conflicts,
        "post_retries": stats.post_retries,
        "vote_errors": dict(stats.vote_errors),
        "rejected_posts": dict(stats.rejected),
    }


def wait_published(system: System, k: int, deadline: float) -> None:
    """Until no research row is left unpublished except groups smaller than k."""
    while time.monotonic() < deadline:
        pending = audit_rows(system.db_url)["releasable_unpublished"]
        if pending == 0:
            return
        time.sleep(1)


def audit_rows(db_url: str, k: int = DEFAULT_K) -> dict:
    from sqlalchemy import select

    from marketplace.ocean.kanon import group_counts
    from marketplace.ocean.settings import DEFAULT_QUASI_IDENTIFIERS
    from marketplace.storage import make_engine
    from marketplace.storage.models import ResearchRow

    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(ResearchRow)).all()
    engine.dispose()
    unpublished = [dict(r._mapping) for r in rows if r.published_at is None]
    counts = group_counts(unpublished, DEFAULT_QUASI_IDENTIFIERS)
    releasable = sum(n for n in counts.values() if n >= k)
    return {
        "rows": len(rows),
        "published": len(rows) - len(unpublished),
        # groups with fewer than k rows wait for company (k-anonymity), by design
        "held_back_by_k": len(unpublished) - releasable,
        "releasable_unpublished": releasable,
    }


def audit(
    system: System, stats: Stats, k: int = DEFAULT_K, notes: list[str] | None = None
) -> list[str]:
    """Nothing lost, nothing doubled: returns the list of violations (empty: all good).

    With ``notes``, cases stored without a 202 reaching any client (a connection killed
    between commit and answer) are noted there instead of counted as problems."""
    from sqlalchemy import func, select

    from marketplace import research
    from marketplace.domain.ledger import TREASURY, doctor_account, escrow_account
    from marketplace.ocean.dataset import COLUMNS, digest, public_row
    from marketplace.ocean.state import COMMITTED, STAGED, OceanState
    from marketplace.storage import make_engine, make_sessionmaker
    from marketplace.storage.models import (
        Case,
        LedgerEntry,
        LedgerTransaction,
        ResearchRow,
        Vote,
    )

    problems: list[str] = []
    engine = make_engine(system.db_url)
    session = make_sessionmaker(engine)()
    try:
        stored = session.execute(select(Case.id, func.count()).group_by(Case.id)).all()
        stored_ids = {cid for cid, _ in stored}
        accepted = set(stats.accepted)
        if lost := accepted - stored_ids:
            problems.append(f"{len(lost)} accepted cases are missing: {sorted(lost)[:5]}")
        if extra := stored_ids - accepted:
            (problems if notes is None else notes).append(
                f"{len(extra)} stored cases no patient got a 202 for"
            )
        if doubled := [cid for cid, n in stored if n != 1]:
            problems.append(f"cases stored more than once: {doubled[:5]}")
        cases = {c.id: c for c in session.scalars(select(Case))}
        unsettled = [cid for cid in accepted if cid in cases and cases[cid].status != "settled"]
        if unsettled:
            problems.append(f"{len(unsettled)} accepted cases did not settle")

        txns = collections.defaultdict(list)
        for t in session.scalars(select(LedgerTransaction)):
            txns[(t.case_id, t.kind)].append(t.id)
        entries = collections.defaultdict(list)
        for e in session.scalars(select(LedgerEntry)):
            entries[e.transaction_id].append(e)
        total = sum(e.amount for es in entries.values() for e in es)
        if total != 0:
            problems.append(f"ledger does not balance: entries sum to {total}")
        for tid, es in entries.items():
            if sum(e.amount for e in es) != 0:
                problems.append(f"ledger transaction {tid} is unbalanced")
        votes = collections.defaultdict(list)
        for v in session.scalars(select(Vote)):
            votes[v.case_id].append(v)
        for cid, case in cases.items():
            funds = txns.get((cid, "fund_escrow"), [])
            if case.predicted_at is not None and len(funds) != 1:
                problems.append(f"case {cid}: escrow funded {len(funds)} times")
                continue
            escrow = escrow_account(cid)
            funded = sum(
                e.amount
                for kind in ("fund_escrow", "escalation")
                for tid in txns.get((cid, kind), [])
                for e in entries[tid]
                if e.account == escrow
            )
            if case.status != "settled":
                continue
            payouts = txns.get((cid, "payout"), [])
            if len(payouts) != 1:
                problems.append(f"case {cid}: paid out {len(payouts)} times")
                continue
            legs = entries[payouts[0]]
            paid = sum(e.amount for e in legs if e.account != escrow)
            if paid != funded:
                problems.append(f"case {cid}: paid {paid}, escrow held {funded}")
            agreeing = {
                doctor_account(v.doctor_id) for v in votes[cid] if v.label == case.diagnosis
            }
            payees = {e.account for e in legs if e.account != escrow}
            if payees - agreeing or TREASURY in payees:
                problems.append(f"case {cid}: paid someone who did not agree")
            if case.research_row_id is None:
                problems.append(f"settled case {cid} has no research row")
        row_owners = collections.Counter(
            c.research_row_id for c in cases.values() if c.research_row_id is not None
        )
        if doubled_rows := [r for r, n in row_owners.items() if n != 1]:
            problems.append(f"research rows shared by cases: {doubled_rows[:5]}")
        all_rows = {r.id: r for r in session.scalars(select(ResearchRow))}
        if orphans := set(all_rows) - set(row_owners):
            problems.append(f"{len(orphans)} research rows belong to no case")
        published = {rid for rid, r in all_rows.items() if r.published_at is not None}

        # Ocean side: the publisher's committed rows, the CSV file and the on-chain digest.
        state = OceanState(system.ocean_dir / "publisher.sqlite3")
        try:
            committed = state.all_rows([COMMITTED])
            staged = state.all_rows([STAGED])
        finally:
            state.close()
        committed_ids = [r.row_id for r in committed]
        if len(committed_ids) != len(set(committed_ids)):
            problems.append("a row was committed to the data set twice")
        if set(committed_ids) != published:
            problems.append(
                f"published in the DB {len(published)} rows, committed on Ocean "
                f"{len(set(committed_ids))} (staged {len(staged)})"
            )
        expected = collections.Counter(
            tuple(public_row(research._public(all_rows[rid]))[c] for c in COLUMNS)
            for rid in published
            if rid in all_rows
        )
        csv_path = system.ocean_dir / "crypto-doctor-diagnoses.csv"
        data = csv_path.read_bytes() if csv_path.exists() else b""
        lines = data.decode().splitlines()[1:] if data else []
        in_csv = collections.Counter(tuple(line.split(",")) for line in lines)
        if in_csv != expected:
            problems.append(
                f"CSV rows differ from the published rows ({sum(in_csv.values())} vs "
                f"{sum(expected.values())})"
            )
        on_chain = asset_digest(system)
        if published and (on_chain or {}).get("sha256") != digest(data):
            problems.append(f"CSV digest {digest(data)[:12]} is not the one on chain {on_chain}")
        rows = audit_rows(system.db_url, k)
        if rows["releasable_unpublished"]:
            problems.append(f"{rows['releasable_unpublished']} releasable rows not published")
    finally:
        session.close()
        engine.dispose()
    return problems


def asset_digest(system: System) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(system.service_url + "/asset", timeout=30) as reply:
            return json.loads(reply.read()).get("digest")
    except OSError:
        return None


def researcher_download(system: System) -> dict:
    """The researcher CLI buys and downloads the published file (proves it is sellable)."""
    env = {
        **os.environ,
        "CRYPTO_DOCTOR_OCEAN_RPC_URL": system.rpc_url
        or f"http://127.0.0.1:{system.ports['chain']}",
        "CRYPTO_DOCTOR_OCEAN_SERVICE_URL": system.service_url,
        "CRYPTO_DOCTOR_OCEAN_ADDRESS_FILE": str(system.ocean_dir / "address.json"),
        "CRYPTO_DOCTOR_OCEAN_DATA_DIR": str(system.work / "researcher"),
    }
    out = system.work / "bought.csv"
    for command in (["buy"], ["download", "--out", str(out)]):
        run = subprocess.run(
            [sys.executable, "-m", "marketplace.researcher", *command],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"researcher {command[0]} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout)


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--doctors", type=int, default=50)
    parser.add_argument("--distinct-images", type=int, default=24)
    parser.add_argument("--error-rate", type=float, default=0.05, help="share of wrong votes")
    parser.add_argument("--deadline-s", type=float, default=480, help="whole run, wall clock")
    parser.add_argument("--model-path", type=Path, default=ROOT / "models" / "lenet.pth")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--chain-down-s", type=float, default=15, help="fault test only")
    args = parser.parse_args(argv)
    if not 1 <= args.patients <= 1000 or not 1 <= args.doctors <= 200:
        parser.error("bounded: 1-1000 patients, 1-200 doctors")
    return args


def report(name: str, fig: dict, problems: list[str], extra: dict, out: Path | None) -> int:
    result = {"test": name, **fig, **extra, "problems": problems}
    print(json.dumps(result, indent=2), flush=True)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    if problems:
        print(f"[{name}] FAILED: {len(problems)} problem(s):", *problems, sep="\n  ")
        return 1
    print(f"[{name}] OK: nothing lost, nothing doubled")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[load_test] %(asctime)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    started = time.monotonic()
    deadline = started + args.deadline_s
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="crypto-doctor-load-"))
    work.mkdir(parents=True, exist_ok=True)
    log.info("state and logs in %s (shared 2-core machine: figures are noisy)", work)
    images = make_images(work, max(2, args.distinct_images // 2))
    system = System(work, args.model_path)
    system.start()
    try:
        asyncio.run(wait_ready(system, deadline))
        log.info("system ready after %.1f s", time.monotonic() - started)
        tokens = create_doctors(system.db_url, args.doctors)
        load_start = time.monotonic()
        stats = asyncio.run(
            run_load(system, images, tokens, args.patients, deadline - 90, args.error_rate)
        )
        load_s = time.monotonic() - load_start
        log.info("load finished in %.1f s; waiting for the publisher", load_s)
        wait_published(system, DEFAULT_K, deadline - 60)
        fig = figures(system, stats)
        problems = audit(system, stats)
        bought = researcher_download(system) if not problems else {}
        extra = {
            "patients": args.patients,
            "doctors": args.doctors,
            "load_s": round(load_s, 1),
            "rows": audit_rows(system.db_url),
            "researcher_download": bought,
        }
        code = report("load_test", fig, problems, extra, args.out)
    finally:
        rc = system.stop()
        log.info("system stopped (exit %s); total %.1f s", rc, time.monotonic() - started)
    if code == 0 and len(stats.accepted) < args.patients:
        print(f"[load_test] only {len(stats.accepted)} of {args.patients} patients got a 202")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
