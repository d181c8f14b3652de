"""What the patient side needs from inference: a queue of case ids, and the batching under it.

The patient API depends only on :class:`InferenceQueue`; the MPC engine
(:class:`predictor.engine.PatientSideEngine`) implements it over
:class:`predictor.lease_queue.LeasedCaseQueue`, the queue kept in the clinic's store and shared
by every party pair. :class:`BatchQueue` is the same batching in memory, for a single process
that needs no store-backed queue (the plaintext queue of the patient API's tests).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ModelCard:
    """The served model, as party 1 announced it (public: no weights)."""

    backbone: str
    sha256: str
    #: the version party 1 announced after checking its passport (issue 15); attested False:
    #: served with --allow-unattested; None: not announced
    model_version: str | None = None
    passport_id: str | None = None
    attested: bool | None = None


@dataclass(frozen=True)
class QueueStatus:
    ready: bool
    queued: int
    batches: int
    images: int
    model: ModelCard | None


class InferenceQueue(Protocol):
    """Cases in, predictions recorded in the case store by whoever runs the model."""

    def submit(self, case_id: str) -> None:
        """Queue a stored case for its encrypted prediction (idempotent)."""
        ...

    def pending(self) -> int:
        """Cases waiting for a prediction."""
        ...

    def ready(self) -> bool:
        """True once predictions can be made (the MPC parties have met)."""
        ...

    def status(self) -> QueueStatus: ...


class BatchQueue:
    """Thread-safe FIFO of case ids that hands them out in batches.

    A case id is queued at most once until its batch is done, however often it is submitted.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, case_id: str) -> bool:
        """Queue a case; False when it is already waiting or running."""
        with self._lock:
            if case_id in self._pending:
                return False
            self._pending.add(case_id)
        self._jobs.put(case_id)
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Make :meth:`next_batch` return None once what is queued before it has been handed out."""
        self._jobs.put(None)

    def next_batch(self, max_batch: int, wait_s: float, idle_s: float) -> list[str] | None:
        """Up to ``max_batch`` ids; waits ``wait_s`` after the first for company.

        Returns [] after ``idle_s`` with nothing queued (time for a heartbeat), None once closed.
        """
        try:
            first = self._jobs.get(timeout=idle_s)
        except queue.Empty:
            return []
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + wait_s
        while len(batch) < max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                self._jobs.put(None)  # closed: stop after this batch
                break
            batch.append(nxt)
        return batch

    def done(self, batch: list[str]) -> None:
        """Forget a finished batch's ids (they may be submitted again)."""
        with self._lock:
            self._pending.difference_update(batch)
