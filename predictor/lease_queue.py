"""The inference queue over the clinic's store, as one worker (one party-0 process) sees it.

Every party pair's party 0 runs one :class:`LeasedCaseQueue` per MPC process over the same
table (:mod:`predictor.clinic.queue`): cases are claimed in batches under a lease the worker
renews while its MPC pass runs, so a pair that dies mid-batch loses nothing - its cases are
claimable again once the lease expires. A submission in this process wakes its worker at once;
workers in other processes find new cases at their next poll (``poll_s``).

It implements :class:`~predictor.inference_queue.InferenceQueue` for the patient API, and the
batching side (:meth:`next_batch`, :meth:`done`) for :class:`~predictor.engine.PatientSideEngine`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from predictor.clinic import queue as store
from predictor.clinic.queue import ClaimedCase

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


class LeasedCaseQueue:
    """One worker's view of the shared queue: claims, lease renewal, wake-ups."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        worker: str,
        *,
        lease_s: float,
        poll_s: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if lease_s <= 0 or poll_s <= 0:
            raise ValueError("lease_s and poll_s must be positive")
        self.sessions = sessions
        self.worker = store.check_worker(worker)
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.clock = clock
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        #: Cases this worker holds right now (the batch in flight): renewed until done.
        self._held: list[str] = []
        self._waiting = 0
        self._counted_at = 0.0
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)

    # -- InferenceQueue (the patient API's side) ----------------------------------------

    def submit(self, case_id: str) -> None:
        """The case's image is stored: release its upload hold and wake this worker."""
        with self.sessions() as session:
            store.release_upload(session, case_id)
        self._wake.set()

    def pending(self) -> int:
        """Cases waiting across every pair (as last counted; refreshed about once a second)."""
        return self._waiting

    # -- the worker's side --------------------------------------------------------------

    def start(self) -> int:
        """Release what a previous process with this worker id held; start renewing leases."""
        with self.sessions() as session:
            released = store.release_worker(session, self.worker)
        if released:
            log.info("released %d case(s) leased by this worker's previous run", released)
        self._renewer.start()
        return released

    def close(self) -> None:
        """Make :meth:`next_batch` return None (after the batch in flight)."""
        self._closed.set()
        self._wake.set()

    def next_batch(self, max_batch: int, wait_s: float, idle_s: float) -> list[ClaimedCase] | None:
        """Up to ``max_batch`` claimed cases, waiting ``wait_s`` for company when short.

        Returns [] after ``idle_s`` with nothing to claim (time for a heartbeat), None once
        closed.
        """
        idle_until = time.monotonic() + idle_s
        while True:
            if self._closed.is_set():
                return None
            self._wake.clear()
            batch = self._claim(max_batch)
            if batch and len(batch) < max_batch and wait_s > 0:
                self._wake.wait(wait_s)
                batch += self._claim(max_batch - len(batch))
            self._count()
            if batch:
                return batch
            remaining = idle_until - time.monotonic()
            if remaining <= 0:
                return []
            self._wake.wait(min(self.poll_s, remaining))

    def done(self, batch: list[ClaimedCase]) -> None:
        """The batch's outcomes are recorded: stop renewing its leases."""
        finished = {claimed.case_id for claimed in batch}
        with self._lock:
            self._held = [case_id for case_id in self._held if case_id not in finished]

    def _claim(self, limit: int) -> list[ClaimedCase]:
        with self.sessions() as session:
            # Look before taking the write lock (SQLite's one writer; PostgreSQL's row locks).
            if not store.any_claimable(session, now=self.clock()):
                return []
            claimed = store.claim(
                session, self.worker, limit=limit, now=self.clock(), lease_s=self.lease_s
            )
        with self._lock:
            self._held += [c.case_id for c in claimed]
        return claimed

    def _count(self) -> None:
        if time.monotonic() - self._counted_at < 1.0:
            return
        with self.sessions() as session:
            self._waiting = store.waiting(session)
        self._counted_at = time.monotonic()

    def _renew_loop(self) -> None:
        """Renew this worker's leases every third of ``lease_s`` while it holds any."""
        while not self._closed.wait(self.lease_s / 3):
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                with self.sessions() as session:
                    store.renew(session, self.worker, held, now=self.clock(), lease_s=self.lease_s)
            except Exception:  # noqa: BLE001 - a database hiccup: the next renewal tries again
                log.exception("could not renew leases on %d case(s)", len(held))
