"""The clinic's shared inference queue (predictor.clinic.queue), on SQLite and PostgreSQL.

Several party pairs claim from one table: a claim never hands a case to two live workers, a
dead worker's lease expires and another takes the case, a case is recorded (and its
``case.opened`` message posted) once however often it was computed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from marketplace.storage import make_engine, make_sessionmaker
from predictor.clinic import cases
from predictor.clinic import queue as store
from predictor.clinic.models import ClinicOutbox, PatientCase
from predictor.clinic.store import migrate_clinic
from predictor.lease_queue import LeasedCaseQueue
from predictor.settings import parse_predictor_settings
from tests.marketplace.conftest import empty_db_url  # noqa: F401  (registers the fixture)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LEASE_S = 30.0


@pytest.fixture
def sessions(empty_db_url: str) -> sessionmaker[Session]:  # noqa: F811
    migrate_clinic(empty_db_url)
    engine = make_engine(empty_db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _cases(sessions: sessionmaker[Session], n: int, *, release: bool = True) -> list[str]:
    ids = []
    with sessions() as session:
        for i in range(n):
            case_id = cases.create_case(
                session, patient_token_hash=f"{i:064x}", now=T0 + timedelta(seconds=i)
            )
            if release:
                store.release_upload(session, case_id)
            ids.append(case_id)
    return ids


def _claim(sessions, worker: str, limit: int = 8, now: datetime = T0) -> list[str]:
    with sessions() as session:
        claimed = store.claim(session, worker, limit=limit, now=now, lease_s=LEASE_S)
    return [c.case_id for c in claimed]


def _record(sessions, case_id: str, worker: str) -> bool:
    with sessions() as session:
        return cases.record_prediction(
            session, case_id, label="tumor", confidence=0.9, backbone="lenet",
            model_sha256="ab" * 32, now=T0 + timedelta(minutes=1), worker=worker,
        )  # fmt: skip


def test_a_case_waits_for_its_image_then_goes_to_one_worker_oldest_first(sessions) -> None:
    held = _cases(sessions, 1, release=False)
    assert _claim(sessions, "pair0.0") == []  # its upload is still being stored
    ids = _cases(sessions, 3)
    assert _claim(sessions, "pair0.0", limit=2) == ids[:2]
    assert _claim(sessions, "pair1.0", limit=8) == ids[2:]
    assert _claim(sessions, "pair1.0") == []
    with sessions() as session:
        store.release_uploads(session, held)
    assert _claim(sessions, "pair1.0") == held


def test_concurrent_workers_never_share_a_case(sessions) -> None:
    ids = _cases(sessions, 60)
    taken: dict[str, list[str]] = {}

    def work(worker: str) -> None:
        mine = taken.setdefault(worker, [])
        while batch := _claim(sessions, worker, limit=3):
            mine += batch

    threads = [threading.Thread(target=work, args=(f"pair{i}.0",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [case_id for batch in taken.values() for case_id in batch]
    assert sorted(every) == sorted(ids)  # each case once, none lost


def test_a_dead_workers_lease_expires_and_another_pair_takes_the_case(sessions) -> None:
    ids = _cases(sessions, 2)
    assert _claim(sessions, "pair1.0") == ids  # then pair 1 dies: no renewal, no outcome
    later = T0 + timedelta(seconds=LEASE_S - 1)
    assert _claim(sessions, "pair0.0", now=later) == []
    expired = T0 + timedelta(seconds=LEASE_S + 1)
    with sessions() as session:
        retaken = store.claim(session, "pair0.0", limit=8, now=expired, lease_s=LEASE_S)
    assert [(c.case_id, c.attempts) for c in retaken] == [(ids[0], 2), (ids[1], 2)]
    # pair 1 comes back late with its result; pair 0 too: only one counts
    assert _record(sessions, ids[0], "pair1.0") is True
    assert _record(sessions, ids[0], "pair0.0") is False
    with sessions() as session:
        case = session.get(PatientCase, ids[0])
        assert case is not None and case.predicted_by == "pair1.0"
        assert session.scalar(select(func.count()).select_from(ClinicOutbox)) == 1
        assert store.waiting(session) == 1


def test_renewal_keeps_a_live_workers_lease(sessions) -> None:
    ids = _cases(sessions, 1)
    assert _claim(sessions, "pair1.0") == ids
    halfway = T0 + timedelta(seconds=LEASE_S / 2)
    with sessions() as session:
        assert store.renew(session, "pair1.0", ids, now=halfway, lease_s=LEASE_S) == 1
        # a worker cannot renew what it does not hold
        assert store.renew(session, "pair0.0", ids, now=halfway, lease_s=LEASE_S) == 0
    assert _claim(sessions, "pair0.0", now=T0 + timedelta(seconds=LEASE_S + 1)) == []


def test_a_returning_worker_releases_what_its_previous_run_held(sessions) -> None:
    ids = _cases(sessions, 3)
    assert _claim(sessions, "pair1.0") == ids
    with sessions() as session:
        assert store.release_worker(session, "pair1.0") == 3
    assert _claim(sessions, "pair1.0") == ids  # at once, not after the lease


def test_worker_ids_are_checked() -> None:
    for bad in ("", "upload", "pair 1", "x" * 65):
        with pytest.raises(ValueError):
            store.check_worker(bad)
    assert store.check_worker("pair12.3") == "pair12.3"


def test_more_than_one_pair_needs_postgresql(capsys) -> None:
    assert parse_predictor_settings([], {}).pairs == 1  # SQLite stays the one-pair default
    for argv in (["--pairs", "2"], ["--processes-per-pair", "2"]):
        with pytest.raises(SystemExit):
            parse_predictor_settings(argv, {})
        assert "needs PostgreSQL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_predictor_settings(["--rank", "0", "--pair-id", "1"], {})
    pg = {"CRYPTO_DOCTOR_CLINIC_DB_URL": "postgresql://clinic@db/clinic"}
    settings = parse_predictor_settings(["--pairs", "4", "--processes-per-pair", "2"], pg)
    assert (settings.pairs, settings.processes_per_pair) == (4, 2)
    worker = parse_predictor_settings(["--rank", "0", "--pair-id", "1", "--pair-process", "2"], pg)
    assert (worker.worker_id, worker.serves_patients) == ("pair1.2", False)


def _lease_queue(sessions, worker: str, lease_s: float) -> LeasedCaseQueue:
    return LeasedCaseQueue(sessions, worker, lease_s=lease_s, poll_s=0.05)


def _eventually(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_a_worker_renews_its_lease_while_it_computes_and_a_dead_one_does_not(sessions) -> None:
    lease_s = 0.6
    busy, other = (
        _lease_queue(sessions, "pair0.0", lease_s),
        _lease_queue(sessions, "pair1.0", lease_s),
    )
    ids = _cases(sessions, 3, release=False)
    for case_id in ids:
        busy.submit(case_id)  # releases the upload hold
    busy.start()
    other.start()
    try:
        batch = busy.next_batch(8, 0.0, 1.0)
        assert batch is not None and [c.case_id for c in batch] == ids
        # Three lease periods later the renewing worker still holds every case.
        started = time.monotonic()
        while time.monotonic() - started < 3 * lease_s:
            assert other.next_batch(8, 0.0, 0.1) == []
        # It stops renewing (as a dead pair does): the other pair gets the cases.
        busy.done(batch)
        taken = _eventually(lambda: other.next_batch(8, 0.0, 0.1))
        assert [(c.case_id, c.attempts) for c in taken] == [(case_id, 2) for case_id in ids]
        assert _eventually(lambda: other.pending() == 3 or None, 5)
    finally:
        busy.close()
        other.close()
    assert busy.next_batch(8, 0.0, 1.0) is None  # closed


def test_two_pairs_on_sqlite_are_refused_at_start(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "--pairs", "2", "--no-ocean",
         "--clinic-db-url", f"sqlite:///{tmp_path / 'clinic.sqlite3'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "needs PostgreSQL" in result.stderr
    assert not (tmp_path / "clinic.sqlite3").exists()  # nothing started, nothing stored
