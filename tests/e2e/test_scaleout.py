"""Several party pairs over one PostgreSQL queue (issue 22), with real processes.

- ``python -m predictor --pairs 2``: 100 cases, each recorded once and escrowed once at the
  marketplace, computed by both pairs;
- a second pair started as separate ``--rank`` processes (as on its own hosts), killed with
  SIGKILL while it holds leased cases: they complete on the other pair, none twice; started
  again, it rejoins the queue.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from infra.messaging import generate_key
from infra.net import free_port
from marketplace.storage import make_engine
from tests.marketplace.helpers import empty_pg_database
from tests.predictor.conftest import http, multipart
from training.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = "CRYPTO_DOCTOR_TEST_PG_URL"
MODEL = ROOT / "models" / "lenet.pth"
LEASE_S = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} not set"),
]


@pytest.fixture
def clinic_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for the clinic's store."""
    with empty_pg_database("cdclinic") as url:
        yield url


def eventually(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log()[-5000:]}")


class Clinic:
    """The supervisor (front door, pair 0, marketplace) over a PostgreSQL clinic store."""

    def __init__(self, work: Path, clinic_url: str, pairs: int) -> None:
        self.work, self.clinic_url = work, clinic_url
        self.patient_url = f"http://127.0.0.1:{free_port()}"
        self.doctor_url = f"http://127.0.0.1:{free_port()}"
        self.market_db = work / "market.sqlite3"
        self.log = work / "supervisor.log"
        self.db = make_engine(clinic_url)
        argv = [
            sys.executable, "-m", "predictor", "--no-ocean", "--allow-unattested",
            "--pairs", str(pairs),
            "--patient-port", self.patient_url.rsplit(":", 1)[1],
            "--doctor-port", self.doctor_url.rsplit(":", 1)[1],
            "--market-db-url", f"sqlite:///{self.market_db}",
            "--data-dir", str(work / "party0"), "--model-path", str(MODEL),
            "--lease-s", str(LEASE_S), "--batch-wait-ms", "50",
        ]  # fmt: skip
        env = {
            **os.environ,
            "CRYPTO_DOCTOR_CLINIC_DB_URL": clinic_url,
            "CRYPTO_DOCTOR_CLINIC_KEY": generate_key(),
            "CRYPTO_DOCTOR_MARKET_KEY": generate_key(),
        }
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.text()[-5000:]
            return "ready:" in self.text()

        eventually("the ready line", ready, 240, self.text)

    def submit(self, images: list[Path]) -> list[str]:
        ids = []
        for path in images:
            body, headers = multipart(path.name, path.read_bytes())
            status, payload, _ = http(
                "POST", self.patient_url + "/image", data=body, headers=headers
            )
            assert status == 202, payload
            ids.append(json.loads(payload)["case_id"])
        return ids

    def query(self, sql: str, **params: Any) -> list[tuple]:
        with self.db.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]

    def outcomes(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """Case id -> (status, predicted_by), for the decided ones."""
        rows = self.query(
            "select id, status, predicted_by from patient_cases"
            " where id = any(:ids) and status <> 'queued'",
            ids=ids,
        )
        return {case_id: (status, by) for case_id, status, by in rows}

    def opened_messages(self) -> dict[str, int]:
        """How many ``case.opened`` messages the clinic's outbox holds per case."""
        counts: dict[str, int] = {}
        for (body,) in self.query("select body from outbox where type = 'case.opened'"):
            case_id = json.loads(body)["case_id"]
            counts[case_id] = counts.get(case_id, 0) + 1
        return counts

    def escrows(self) -> dict[str, int]:
        """How many times the marketplace funded each case's escrow."""
        if not self.market_db.exists():
            return {}
        with sqlite3.connect(self.market_db) as db:
            rows = db.execute(
                "select case_id, count(*) from ledger_transactions"
                " where kind = 'fund_escrow' group by case_id"
            ).fetchall()
        return dict(rows)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.db.dispose()


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A few generated slices of both classes (deterministic)."""
    root = generate_dataset(tmp_path_factory.mktemp("mri"), seed=7, train=2, eval=8)
    return sorted(path for path in (root / "eval").rglob("*") if path.is_file())


def _images(scans: list[Path], n: int) -> list[Path]:
    return [scans[i % len(scans)] for i in range(n)]


def _once_each(clinic: Clinic, ids: list[str]) -> None:
    """Every case recorded, one case.opened message each, escrowed exactly once."""
    assert all(status == "open" for status, _ in clinic.outcomes(ids).values())
    opened = clinic.opened_messages()
    assert {case_id: opened.get(case_id) for case_id in ids} == dict.fromkeys(ids, 1)
    eventually(
        "every escrow at the marketplace",
        lambda: set(ids) <= set(clinic.escrows()),
        60,
        clinic.text,
    )
    escrows = clinic.escrows()
    assert sum(escrows.get(case_id, 0) for case_id in ids) == len(ids)


def test_two_pairs_record_and_escrow_100_cases_once(
    tmp_path: Path, clinic_pg_url: str, scans: list[Path]
) -> None:
    clinic = Clinic(tmp_path, clinic_pg_url, pairs=2)
    try:
        clinic.wait_ready()
        assert "party 0 of pair 1.0 started" in clinic.text()
        ids = clinic.submit(_images(scans, 100))
        eventually("100 predictions", lambda: len(clinic.outcomes(ids)) == 100, 300, clinic.text)
        _once_each(clinic, ids)
        workers = {by for _, by in clinic.outcomes(ids).values()}
        assert workers == {"pair0.0", "pair1.0"}  # both pairs took cases from the queue
    finally:
        clinic.stop()


class SeparatePair:
    """Pair 1 as two separately started ``--rank`` processes, as on its own two hosts."""

    def __init__(self, clinic: Clinic, tag: str) -> None:
        port = free_port()
        common = ["--pair-id", "1", "--master-port", str(port), "--lease-s", str(LEASE_S)]
        self.logs = [clinic.work / f"pair1-{tag}-party{rank}.log" for rank in (0, 1)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_DOCTOR_")}
        self.processes = []
        for rank, log in enumerate(self.logs):
            argv = [sys.executable, "-m", "predictor", "--rank", str(rank), *common]
            child_env = dict(env)
            if rank == 0:
                # The clinic's side: its store and its images; it needs no key (it only
                # records: the front door's courier delivers) and serves no HTTP.
                argv += ["--data-dir", str(clinic.work / "party0"), "--batch-wait-ms", "400"]
                child_env["CRYPTO_DOCTOR_CLINIC_DB_URL"] = clinic.clinic_url
            else:
                argv += ["--model-path", str(MODEL), "--allow-unattested"]  # no chain here
            with open(log, "wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        argv, cwd=ROOT, env=child_env, stdout=out, stderr=subprocess.STDOUT
                    )
                )

    def text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def kill(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_pair_killed_mid_batch_loses_nothing_and_rejoins(
    tmp_path: Path, clinic_pg_url: str, scans: list[Path]
) -> None:
    clinic = Clinic(tmp_path, clinic_pg_url, pairs=1)
    pairs: list[SeparatePair] = []
    try:
        clinic.wait_ready()
        pairs.append(SeparatePair(clinic, "first"))
        both = lambda: clinic.text() + pairs[-1].text()  # noqa: E731
        eventually(
            "pair 1 ready", lambda: "encrypted lenet model ready" in pairs[-1].text(), 240, both
        )
        ids = clinic.submit(_images(scans, 40))

        def pair1_holds() -> list[str]:
            rows = clinic.query(
                "select id from patient_cases where status = 'queued'"
                " and lease_owner = 'pair1.0' and id = any(:ids)",
                ids=ids,
            )
            return [case_id for (case_id,) in rows]

        held = eventually("pair 1 holding leased cases", pair1_holds, 120, both)
        pairs[-1].kill()  # mid-batch: claimed, not recorded
        held = [c for c in held if c not in clinic.outcomes(held)]
        assert held, "pair 1 recorded its batch before the kill landed"
        eventually("every case decided", lambda: len(clinic.outcomes(ids)) == 40, 240, both)
        outcomes = clinic.outcomes(ids)
        assert {outcomes[case_id][1] for case_id in held} == {"pair0.0"}
        attempts = clinic.query("select attempts from patient_cases where id = any(:ids)", ids=held)
        assert all(count >= 2 for (count,) in attempts)  # computed again after the lease
        _once_each(clinic, ids)

        # The pair comes back (same pair id): it takes cases from the queue again.
        pairs.append(SeparatePair(clinic, "again"))
        eventually(
            "pair 1 ready again",
            lambda: "encrypted lenet model ready" in pairs[-1].text(),
            240,
            both,
        )
        more = clinic.submit(_images(scans, 40))
        eventually("the next 40 decided", lambda: len(clinic.outcomes(more)) == 40, 240, both)
        assert "pair1.0" in {by for _, by in clinic.outcomes(more).values()}
        _once_each(clinic, ids + more)
        assert re.search(r"pair1\.0 party 0\].*encrypted batch of", pairs[-1].text())
    finally:
        for pair in pairs:
            pair.stop()
        clinic.stop()
