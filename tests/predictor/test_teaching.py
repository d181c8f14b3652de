"""Which settled cases teach the model, the job that runs a round every N cases, and the
deletion of their images; the store on SQLite and PostgreSQL alike."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from infra.messaging import Envelope, new_message_id
from marketplace.messages import CLINIC, MARKETPLACE, CaseSettled, CasesTaught
from marketplace.storage import make_engine, make_sessionmaker
from models.checkpoint import file_sha256
from predictor.clinic import cases, teaching
from predictor.clinic.models import ClinicOutbox, PatientCase, TeachingRound
from predictor.clinic.store import migrate_clinic
from predictor.images import ImageStore
from predictor.teach import Teacher, TeachSettings
from tests.marketplace.conftest import empty_db_url  # noqa: F401  (registers the fixture)
from tests.predictor.test_unfamiliar_case import sessions  # noqa: F401  (the clinic's store)
from training.encrypted_finetune import journal_path
from training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TOKEN_HASH = "ab" * 32
RETENTION = timedelta(days=30)


def _case(
    sessions,  # noqa: F811
    *,
    consent: bool = True,
    unfamiliar: bool = False,
    diagnosis: str | None = "tumor",
    settled_at: datetime = T0,
) -> str:
    with sessions() as session:
        case_id = cases.create_case(
            session, patient_token_hash=TOKEN_HASH, now=T0, teaching_consent=consent
        )
        cases.record_prediction(
            session, case_id, label="tumor", confidence=0.7, backbone="lenet",
            model_sha256="cd" * 32, now=T0, unfamiliar=unfamiliar,
        )  # fmt: skip
        if diagnosis is not None:
            settled = CaseSettled(case_id, diagnosis, settled_at, 3, 1.0)
            cases.apply_case_settled(
                session,
                Envelope(
                    new_message_id(), CaseSettled.TYPE, MARKETPLACE, CLINIC, 0.0, settled.body()
                ),  # fmt: skip
            )
        session.commit()
    return case_id


def test_only_settled_consenting_familiar_cases_teach_and_each_only_once(sessions) -> None:  # noqa: F811
    now = T0 + timedelta(days=1)
    teaches = [
        _case(sessions, diagnosis=d, settled_at=T0 + timedelta(hours=h))
        for h, d in enumerate(("tumor", "no_tumor"))
    ]  # oldest settlement first
    _case(sessions, consent=False)  # the patient said no
    _case(sessions, unfamiliar=True)  # the model did not know this kind of image
    _case(sessions, diagnosis=None)  # not settled yet
    _case(sessions, settled_at=now - RETENTION - timedelta(hours=1))  # waited too long
    with sessions.begin() as session:
        found = teaching.eligible_cases(session, now=now, retention=RETENTION)
        assert [c.case_id for c in found] == teaches
        assert [c.folder for c in found] == ["yes", "no"]
        round_id = teaching.open_round(session, found, now=now)
    with sessions.begin() as session:
        assert teaching.eligible_cases(session, now=now, retention=RETENTION) == []
        running = teaching.running_round(session)
        assert running is not None and running[0] == round_id
        assert [c.case_id for c in running[1]] == teaches
        with pytest.raises(RuntimeError, match="another round"):  # taken: not twice
            teaching.open_round(session, found, now=now)
    with sessions.begin() as session:
        with pytest.raises(ValueError, match="unknown outcome"):
            teaching.finish_round(session, round_id, outcome="done", now=now)
        teaching.finish_round(
            session, round_id, outcome="refused", now=now, epsilon=3.0, reasons=["AUC fell"]
        )
    with sessions.begin() as session:
        assert teaching.running_round(session) is None
        record = session.get(TeachingRound, round_id)
        assert record is not None and (record.outcome, record.cases) == ("refused", 2)
        assert record.reasons == "AUC fell"


def test_a_consenting_case_image_is_deleted_after_its_round_or_when_retention_ends(
    sessions,  # noqa: F811
) -> None:
    now = T0 + timedelta(days=1)
    taught = _case(sessions)
    waiting = _case(sessions)  # settled a day ago: still waits for a round
    expired = _case(sessions, unfamiliar=True, settled_at=now - RETENTION)  # never teaches
    declined = _case(sessions, consent=False, settled_at=now - 2 * RETENTION)  # not ours
    with sessions.begin() as session:
        found = teaching.eligible_cases(session, now=now, retention=RETENTION)
        round_id = teaching.open_round(session, [c for c in found if c.case_id == taught], now=now)
        # while the round runs, its image is needed
        assert teaching.images_to_delete(session, now=now, retention=RETENTION) == [expired]
        with pytest.raises(ValueError, match="names its candidate"):
            teaching.finish_round(session, round_id, outcome="promoted", now=now)
        teaching.finish_round(session, round_id, outcome="promoted", now=now,
                              candidate_sha256="c1" * 32, parent_sha256="c0" * 32)  # fmt: skip
    with sessions.begin() as session:
        (sent,) = session.scalars(select(ClinicOutbox).where(ClinicOutbox.type == "cases.taught"))
        body = sent.body if isinstance(sent.body, dict) else json.loads(sent.body)
        assert CasesTaught.parse(body).case_ids == (taught,)
        due = teaching.images_to_delete(session, now=now, retention=RETENTION)
        assert sorted(due) == sorted([taught, expired]) and waiting not in due
        assert declined not in due
        teaching.mark_images_deleted(session, due, now=now)
    with sessions.begin() as session:
        assert teaching.images_to_delete(session, now=now, retention=RETENTION) == []
        assert teaching.eligible_cases(session, now=now, retention=RETENTION)[0].case_id == waiting


def test_the_settings_refuse_a_round_smaller_than_one_batch() -> None:
    with pytest.raises(ValueError, match="--every"):
        TeachSettings(every=4, batch_size=8)
    with pytest.raises(ValueError, match="--retention-days"):
        TeachSettings(retention_days=0)


def _journal_done(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["progress"]["done"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


@pytest.mark.slow
def test_the_job_waits_for_n_cases_teaches_resumes_after_a_crash_and_deletes_the_images(
    tmp_path,
) -> None:
    data = generate_dataset(tmp_path / "mri", seed=13, train=40, eval=100)
    url = f"sqlite:///{tmp_path / 'clinic.sqlite3'}"
    migrate_clinic(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)  # noqa: F811  (a file: the job's subprocess reads it)
    store = ImageStore(tmp_path / "party0")
    now = datetime.now(UTC)
    taught, kept = [], []
    for label, diagnosis in (("yes", "tumor"), ("no", "no_tumor")):
        for path in sorted((data / "train" / label).iterdir())[:20]:
            case_id = _case(sessions, diagnosis=diagnosis, settled_at=now)
            store.commit(store.stage(path.read_bytes(), "image/jpeg"), case_id)
            taught.append(case_id)
        declined = _case(sessions, consent=False, diagnosis=diagnosis, settled_at=now)
        store.commit(store.stage(path.read_bytes(), "image/jpeg"), declined)
        kept.append(declined)
    parent = tmp_path / "lenet.pth"
    shutil.copy(REPO / "models" / "lenet.pth", parent)
    before = file_sha256(parent)
    flags = [
        "--clinic-db-url", url, "--data-dir", str(tmp_path / "party0"),
        "--checkpoint", str(parent), "--owner-dir", str(data / "train"),
        "--eval-dir", str(data / "eval"), "--out-dir", str(tmp_path / "rounds"),
        "--dp-epsilon", "20",
    ]  # fmt: skip

    def settings(every: int) -> TeachSettings:
        return TeachSettings(
            clinic_db_url=url, data_dir=tmp_path / "party0", every=every, checkpoint=parent,
            owner_dir=data / "train", eval_dir=data / "eval", out_dir=tmp_path / "rounds",
            dp_epsilon=20.0,
        )  # fmt: skip

    try:
        waiting = Teacher(settings(41), sessions).run(datetime.now(UTC))
        assert waiting == {"round": None, "eligible": 40, "waiting_for": 41, "images_deleted": 0}
        with open(tmp_path / "party0" / "teaching" / ".lock", "w") as lock:  # another run
            fcntl.flock(lock, fcntl.LOCK_EX)
            assert Teacher(settings(40), sessions).run(datetime.now(UTC)) == {
                "busy": True, "round": None,
            }  # fmt: skip

        job = subprocess.Popen(
            [sys.executable, "-m", "predictor.teach", *flags, "--every", "40"],
            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            journal = None
            while job.poll() is None and time.monotonic() < deadline:
                journals = list((tmp_path / "rounds").glob("*/*.journal.pt"))
                if journals and _journal_done(journals[0]) >= 2:
                    journal = journals[0]
                    break
                time.sleep(0.02)
            assert journal is not None, job.stderr.read().decode() if job.stderr else ""
        finally:
            os.killpg(job.pid, signal.SIGKILL)  # the job and both parties, mid-round
            job.wait()
        with sessions() as session:
            (round_id,) = session.scalars(select(TeachingRound.id)).all()
            assert session.get(TeachingRound, round_id).outcome == "running"  # type: ignore[union-attr]
        assert all(store.find(case_id) for case_id in taught)  # nothing deleted mid-round
        assert journal == journal_path(tmp_path / "rounds" / round_id / "lenet.pth")

        report = Teacher(settings(40), sessions).run(datetime.now(UTC))
        assert report["round"] == round_id and report["cases"] == 40  # resumed, not restarted
        assert report["outcome"] in ("promoted", "refused")
        assert report["images_deleted"] == 40
        candidate = Path(report["candidate"])
        provenance = json.loads(candidate.with_suffix(".provenance.json").read_text())
        assert provenance["interruptions"]["resumes"] == 1
        assert provenance["taught_by"]["settled_cases"] == 32  # 8 more judged it, encrypted
        assert provenance["gate"]["held_out"]["images"] == 8
        assert file_sha256(parent) == before  # the serving model is never written
        with sessions() as session:
            record = session.get(TeachingRound, round_id)
            assert record is not None and record.outcome == report["outcome"]
            assert record.candidate_sha256 == file_sha256(candidate)
            assert record.epsilon == provenance["differential_privacy"]["epsilon"]
            rows = {c.id: c for c in session.scalars(select(PatientCase))}
        assert all(rows[c].teaching_round_id == round_id for c in taught)
        with sessions() as session:  # a promoted round tells the marketplace, for the doctors
            sent = [CasesTaught.parse(json.loads(m.body)) for m in session.scalars(
                select(ClinicOutbox).where(ClinicOutbox.type == CasesTaught.TYPE))]  # fmt: skip
        if report["outcome"] == "promoted":
            (message,) = sent
            assert sorted(message.case_ids) == sorted(taught)
            assert (message.model_sha256, message.parent_sha256) == (
                record.candidate_sha256,
                before,
            )
        else:
            assert sent == []
        assert all(rows[c].image_deleted_at is not None for c in taught)
        assert not any(store.find(case_id) for case_id in taught)
        assert all(store.find(case_id) for case_id in kept)  # no consent: not touched
        assert not (tmp_path / "party0" / "teaching" / round_id).exists()  # the copies too

        again = Teacher(settings(8), sessions).run(datetime.now(UTC))
        assert again == {"round": None, "eligible": 0, "waiting_for": 8, "images_deleted": 0}
    finally:
        engine.dispose()
