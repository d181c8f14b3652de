"""An honest in-process InferenceQueue for tests: the plaintext seed model, no MPC.

A :class:`BatchQueue` drained by a thread that runs the plaintext seed model and records
predictions through the same ``cases.record_prediction`` the MPC engine uses.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

import torch

from models.checkpoint import load_checkpoint
from models.preprocessing import CLASS_NAMES, Preprocessing
from predictor.clinic import cases
from predictor.images import ImageStore
from predictor.inference_queue import BatchQueue, ModelCard, QueueStatus
from predictor.outcomes import OutcomeWaiters
from tests.predictor.conftest import SEED_MODEL


class PlaintextQueue:
    """A real InferenceQueue without MPC: batches recorded with the plaintext seed model."""

    def __init__(self, sessions, images: ImageStore, waiters: OutcomeWaiters) -> None:
        self.sessions, self.images, self.waiters = sessions, images, waiters
        self.jobs = BatchQueue()
        self.batches: list[list[str]] = []
        self.gate = threading.Event()  # cleared: the worker holds batches back
        self.gate.set()
        checkpoint = load_checkpoint(SEED_MODEL)
        self.model, self.temperature = checkpoint.model().eval(), checkpoint.temperature
        self.preprocessing = Preprocessing(checkpoint.architecture.image_size)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, case_id: str) -> None:
        self.jobs.submit(case_id)

    def pending(self) -> int:
        return self.jobs.pending()

    def ready(self) -> bool:
        return True

    def status(self) -> QueueStatus:
        images = sum(len(b) for b in self.batches)
        return QueueStatus(
            True, self.pending(), len(self.batches), images, ModelCard("lenet", "0" * 64)
        )

    def close(self) -> None:
        self.gate.set()
        self.jobs.close()
        self.thread.join(10)

    def _run(self) -> None:
        while (batch := self.jobs.next_batch(8, 0.05, 0.5)) is not None:
            if not batch:
                continue
            self.gate.wait()
            tensors = [self.preprocessing.tensor_from_path(self.images.find(c)[0]) for c in batch]
            with torch.no_grad():
                logits = self.model(torch.stack(tensors))
            diffs = (logits[:, 1] - logits[:, 0]) / self.temperature
            with self.sessions() as session:
                for case_id, diff in zip(batch, diffs.tolist(), strict=True):
                    p_tumor = 1 / (1 + math.exp(-diff))
                    label = int(p_tumor >= 0.5)
                    cases.record_prediction(
                        session,
                        case_id,
                        label=CLASS_NAMES[label],
                        confidence=max(p_tumor, 1 - p_tumor),
                        backbone="lenet",
                        model_sha256="0" * 64,
                        now=datetime.now(UTC),
                    )
            self.batches.append(batch)
            self.jobs.done(batch)
            self.waiters.notify_threadsafe(batch)
