"""``python -m predictor.teach``: fine-tune the model on the clinic's settled cases, every N.

Run it on party 0's host, from cron or a timer (each run does what is due, then exits):

    python -m predictor.teach --every 32 --checkpoint models/lenet.pth \\
        --owner-dir data/seed/train --eval-dir data/seed/eval --out-dir runs/teaching

1. When at least ``--every`` cases may teach (settled with a panel label, the patient
   consented at upload, not flagged unfamiliar, not taken before; ``predictor.clinic.teaching``),
   a round takes all of them: their images are copied into a private folder under party 0's
   data folder, sorted into ``yes/`` and ``no/`` by the panel's diagnosis.
2. ``python -m training.encrypted_finetune`` runs on that folder (a child process): party 0 secret-shares the
   images, party 1 the current weights (``--checkpoint``), DP-SGD under MPC, the gate. The
   candidate lands in ``--out-dir/<round>/`` with its provenance, promoted or refused.
3. The round's outcome is recorded in the clinic's store; the copied folder and the cases'
   stored images are deleted: a case teaches once.
4. Every run also deletes the images of consenting cases that no round took within
   ``--retention-days`` of settlement (unfamiliar ones, or too few cases for a round).

A crash mid-round leaves the round running: the next run resumes it (the fine-tune's journal)
instead of starting another. One run at a time: a run that finds another holding the lock
(``<data-dir>/teaching/.lock``) says so and exits 0. A round whose fine-tune refused its
inputs is recorded as failed;
its cases are not taken again. Exit status 0: nothing due, or the candidate was promoted;
3: it was refused; 2: bad settings, or the fine-tune refused its inputs; 1: a crash (run it
again).
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from infra.settings import flag, parse_settings
from predictor.clinic import teaching
from predictor.clinic.store import DEFAULT_CLINIC_DB_URL, clinic_sessions
from predictor.images import ImageStore

log = logging.getLogger(__name__)

#: ``python -m training.encrypted_finetune``'s exit statuses: promoted, refused, bad inputs.
PROMOTED, REFUSED, BAD_INPUTS = 0, 3, 2


@dataclass(frozen=True)
class TeachSettings:
    """``python -m predictor.teach``'s flags (env ``CRYPTO_DOCTOR_*``)."""

    clinic_db_url: str = field(
        default=DEFAULT_CLINIC_DB_URL, metadata=flag("party 0's own store (SQLAlchemy URL)")
    )
    data_dir: Path = field(
        default=Path("var/party0"), metadata=flag("party 0's private folder (images)")
    )
    every: int = field(
        default=32,
        metadata=flag("a round starts once this many cases may teach", env="TEACH_EVERY"),
    )
    retention_days: float = field(
        default=30.0,
        metadata=flag(
            "days after settlement a consenting case's image waits for a round",
            env="TEACH_RETENTION_DAYS",
        ),
    )
    checkpoint: Path = field(
        default=Path("models/lenet.pth"),
        metadata=flag("the model party 1 serves: the parent", env="TEACH_CHECKPOINT"),
    )
    owner_dir: Path = field(
        default=Path("data/seed/train"),
        metadata=flag("the model owner's training yes/, no/", env="TEACH_OWNER_DIR"),
    )
    eval_dir: Path = field(
        default=Path("data/seed/eval"),
        metadata=flag("the model owner's eval yes/, no/", env="EVAL_DIR"),
    )
    out_dir: Path = field(
        default=Path("runs/teaching"),
        metadata=flag("where each round's candidate is written", env="TEACH_OUT_DIR"),
    )
    batch_size: int = field(
        default=8, metadata=flag("expected cases per DP-SGD step", env="TEACH_BATCH_SIZE")
    )
    dp_epsilon: float = field(
        default=3.0, metadata=flag("the DP budget of one round", env="TEACH_DP_EPSILON")
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be positive")
        if self.every < self.batch_size:
            raise ValueError(f"--every must be at least --batch-size ({self.batch_size})")
        if not self.retention_days > 0:
            raise ValueError("--retention-days must be positive")

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)

    def finetune_argv(self, cases_dir: Path, out: Path) -> list[str]:
        return [
            "--checkpoint", str(self.checkpoint), "--cases-dir", str(cases_dir),
            "--owner-dir", str(self.owner_dir), "--eval-dir", str(self.eval_dir),
            "--out", str(out), "--batch-size", str(self.batch_size),
            "--dp-epsilon", str(self.dp_epsilon),
        ]  # fmt: skip


class Teacher:
    """One run of the job over party 0's store and image folder."""

    def __init__(self, settings: TeachSettings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.images = ImageStore(settings.data_dir)
        self.rounds_dir = Path(settings.data_dir) / "teaching"

    def run(self, now: datetime) -> dict[str, Any]:
        """Do what is due; ``{"busy": True}`` when another run of the job holds the lock."""
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        with open(self.rounds_dir / ".lock", "w") as lock:
            try:  # one job at a time (cron may start the next before this one ends)
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return {"busy": True, "round": None}
            return self._run_locked(now)

    def _run_locked(self, now: datetime) -> dict[str, Any]:
        with self.sessions.begin() as session:
            pending = teaching.running_round(session)
        self._remove_orphans(None if pending is None else pending[0])
        report: dict[str, Any] = {"round": None}
        if pending is None:
            pending = self._open(now, report)
        if pending is not None:
            report.update(self._teach(*pending, now=now))
        report["images_deleted"] = self.sweep(now)
        return report

    def sweep(self, now: datetime) -> int:
        """Delete the images whose teaching purpose is over (``teaching.images_to_delete``)."""
        with self.sessions.begin() as session:
            due = teaching.images_to_delete(session, now=now, retention=self.settings.retention)
        for case_id in due:  # files first: a crash here is redone by the next run
            self.images.delete(case_id)
        with self.sessions.begin() as session:
            teaching.mark_images_deleted(session, due, now=now)
        return len(due)

    def _open(
        self, now: datetime, report: dict[str, Any]
    ) -> tuple[str, list[teaching.TeachingCase]] | None:
        with self.sessions.begin() as session:
            cases = teaching.eligible_cases(session, now=now, retention=self.settings.retention)
            kept = [case for case in cases if self.images.find(case.case_id) is not None]
            if len(kept) < len(cases):
                log.warning(
                    "%d eligible cases have no stored image: left out", len(cases) - len(kept)
                )
            report["eligible"] = len(kept)
            if len(kept) < self.settings.every:
                report["waiting_for"] = self.settings.every
                return None
            round_id = teaching.open_round(session, kept, now=now)
            self._export(round_id, kept)  # inside the transaction: a failed copy takes nothing
        return round_id, kept

    def _export(self, round_id: str, cases: Sequence[teaching.TeachingCase]) -> None:
        folder = self.rounds_dir / round_id
        for case in cases:
            found = self.images.find(case.case_id)
            if found is None:
                raise FileNotFoundError(f"case {case.case_id}'s image vanished while exported")
            (folder / case.folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[0], folder / case.folder / found[0].name)

    def _teach(
        self, round_id: str, cases: Sequence[teaching.TeachingCase], *, now: datetime
    ) -> dict[str, Any]:
        folder = self.rounds_dir / round_id
        out = self.settings.out_dir / round_id / self.settings.checkpoint.name
        record: dict[str, Any]
        if not folder.is_dir():  # its copies were lost: the round cannot run again
            outcome, record = "failed", {"reasons": ["the round's copied cases were lost"]}
        else:
            log.info("round %s: %d cases teach %s", round_id, len(cases), self.settings.checkpoint)
            status = subprocess.run(
                [sys.executable, "-m", "training.encrypted_finetune",
                 *self.settings.finetune_argv(folder, out)], check=False,
            ).returncode  # fmt: skip
            if status not in (PROMOTED, REFUSED, BAD_INPUTS):  # the round stays running
                raise RuntimeError(f"the fine-tune stopped (exit {status}): run again to resume")
            outcome = {PROMOTED: "promoted", REFUSED: "refused"}.get(status, "failed")
            if outcome == "failed":
                record = {"reasons": [f"the fine-tune refused its inputs (exit {status})"]}
            else:
                record = json.loads(out.with_suffix(".provenance.json").read_text())
        gate: dict[str, Any] = record.get("gate", {})
        with self.sessions.begin() as session:
            teaching.finish_round(
                session, round_id, outcome=outcome, now=now,
                candidate_sha256=record.get("checkpoint_sha256"),
                parent_sha256=record.get("parent", {}).get("sha256"),
                epsilon=record.get("differential_privacy", {}).get("epsilon"),
                reasons=gate.get("reasons", record.get("reasons", [])),
            )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
        return {"round": round_id, "cases": len(cases), "outcome": outcome,
                "candidate": str(out) if outcome != "failed" else None}  # fmt: skip

    def _remove_orphans(self, running: str | None) -> None:
        """Copies left by a run that crashed before its round was committed."""
        for folder in self.rounds_dir.iterdir():
            if folder.is_dir() and folder.name != running:
                shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[teach] %(asctime)s %(levelname)s: %(message)s")
    settings = parse_settings(
        TeachSettings, argv, prog="python -m predictor.teach",
        description="Fine-tune the model on the clinic's settled cases, every N (issue 19).",
    )  # fmt: skip
    report = Teacher(settings, clinic_sessions(settings.clinic_db_url)).run(datetime.now(UTC))
    print(json.dumps(report, indent=2))
    if report.get("outcome") == "failed":
        return BAD_INPUTS
    return REFUSED if report.get("outcome") == "refused" else PROMOTED


if __name__ == "__main__":
    sys.exit(main())
