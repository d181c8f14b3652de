"""The MPC inference engine: one dedicated thread per party, fed by a job queue.

Party 0 owns the queue (jobs are case ids whose images sit in its private store). It
batches what is waiting (up to ``max_batch`` images, waiting at most ``batch_wait_ms`` for
company), announces each batch to party 1 over the MPC channel — the announcement carries
only the batch size — and both parties then run the same encrypted forward pass. Only party 0
learns the output, and writes the prediction to the case database.

Every MPC call happens on this one thread, in the same order on both parties. A broken MPC
channel (the peer died) cannot be repaired inside a process — gloo's group is gone — so the
engine reports it as fatal and the supervisor restarts both parties; queued cases survive in
the database and run again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from marketplace import cases
from marketplace.domain.policy import MarketPolicy
from models.checkpoint import file_sha256, load_checkpoint
from models.inference import IMAGE_OWNER, MODEL_OWNER, EncryptedClassifier
from models.mpc import PartyConfig, init_party
from models.preprocessing import CLASS_NAMES, Preprocessing
from predictor.images import ImageStore

log = logging.getLogger(__name__)

INFER, PING, STOP = "infer", "ping", "stop"


@dataclass
class EngineStats:
    batches: int = 0
    images: int = 0


class PatientSideEngine:
    """Party 0: queue, batching, announcing, recording predictions."""

    def __init__(
        self,
        party: PartyConfig,
        session_factory,
        image_store: ImageStore,
        *,
        max_batch: int,
        batch_wait_ms: float,
        heartbeat_s: float,
        policy: MarketPolicy,
        on_exit: Callable[[BaseException | None], None],
    ) -> None:
        self.party = party
        self.session_factory = session_factory
        self.image_store = image_store
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.heartbeat_s = heartbeat_s
        self.policy = policy
        self.on_exit = on_exit
        #: Called (on this thread) with the ids of cases whose outcome was just recorded.
        self.on_recorded: Callable[[list[str]], None] = lambda case_ids: None
        self.jobs: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self.ready = threading.Event()
        self.stats = EngineStats()
        self.card = None
        self._thread = threading.Thread(target=self._run, name="mpc-party-0", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, case_id: str) -> None:
        """Queue a case once, however often it is submitted (restarts re-submit)."""
        with self._pending_lock:
            if case_id in self._pending:
                return
            self._pending.add(case_id)
        self.jobs.put(case_id)

    def pending_count(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def stop(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=30)

    # -- worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            crypten = init_party(self.party)
            comm = crypten.communicator.get()
            classifier = EncryptedClassifier(crypten, IMAGE_OWNER)
            self.card = classifier.card
            self.preprocessing = Preprocessing(classifier.card.architecture.image_size)
            log.info(
                "encrypted %s model ready (sha256 %s…)",
                self.card.architecture.backbone,
                self.card.model_sha256[:12],
            )
            with self.session_factory() as session:
                for case_id in cases.unfinished_case_ids(session):
                    log.info("re-queueing unfinished case %s", case_id)
                    self.submit(case_id)
            self.ready.set()
            while True:
                batch = self._next_batch()
                if batch is None:
                    comm.broadcast_obj({"op": STOP}, IMAGE_OWNER)
                    crypten.uninit()
                    return
                if not batch:
                    comm.broadcast_obj({"op": PING}, IMAGE_OWNER)
                    continue
                self._run_batch(comm, classifier, batch)
        except BaseException as exc:  # noqa: BLE001 - every failure here is fatal to the party
            log.exception("MPC engine failed")
            self.on_exit(exc)

    def _next_batch(self) -> list[str] | None:
        """Case ids for one forward pass; [] after a quiet heartbeat period; None to stop."""
        try:
            first = self.jobs.get(timeout=self.heartbeat_s)
        except queue.Empty:
            return []
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self.jobs.get(timeout=max(remaining, 0))
                    if remaining > 0
                    else self.jobs.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                self.jobs.put(None)  # stop after this batch
                break
            batch.append(nxt)
        return batch

    def _run_batch(self, comm, classifier: EncryptedClassifier, batch: list[str]) -> None:
        images, ready = [], []
        for case_id in batch:
            found = self.image_store.find(case_id)
            try:
                if found is None:
                    raise FileNotFoundError("image missing from party 0's store")
                images.append(self.preprocessing.tensor_from_path(found[0]))
                ready.append(case_id)
            except (OSError, ValueError) as exc:
                log.error("case %s cannot be run: %s", case_id, exc)
                with self.session_factory() as session:
                    cases.record_inference_failure(
                        session, case_id, reason=str(exc), now=datetime.now(UTC)
                    )
        if ready:
            self._infer(comm, classifier, ready, images)
        with self._pending_lock:
            self._pending.difference_update(batch)
        self.on_recorded(batch)

    def _infer(
        self, comm, classifier: EncryptedClassifier, ready: list[str], images: list[torch.Tensor]
    ) -> None:
        started = time.perf_counter()
        comm.broadcast_obj({"op": INFER, "batch": len(ready)}, IMAGE_OWNER)
        predictions = classifier.predict(torch.stack(images), len(ready))
        seconds = time.perf_counter() - started
        now = datetime.now(UTC)
        with self.session_factory() as session:
            for case_id, prediction in zip(ready, predictions, strict=True):
                cases.record_prediction(
                    session,
                    case_id,
                    label=CLASS_NAMES[prediction.label],
                    confidence=prediction.confidence,
                    backbone=self.card.architecture.backbone,
                    model_sha256=self.card.model_sha256,
                    now=now,
                    policy=self.policy,
                )
        self.stats.batches += 1
        self.stats.images += len(ready)
        log.info("encrypted batch of %d in %.3f s", len(ready), seconds)


class ModelSideEngine:
    """Party 1: holds the checkpoint, follows party 0's announcements."""

    def __init__(
        self,
        party: PartyConfig,
        model_path,
        *,
        on_exit,
        audit: Callable[[dict], None] | None = None,
    ):
        self.party = party
        self.model_path = model_path
        self.on_exit = on_exit
        self.audit = audit
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpc-party-1", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            # Read the checkpoint before the rendezvous: a bad file fails fast, not mid-protocol.
            checkpoint = load_checkpoint(self.model_path)
            crypten = init_party(self.party)
            comm = crypten.communicator.get()
            classifier = EncryptedClassifier(
                crypten, MODEL_OWNER, checkpoint, file_sha256(self.model_path)
            )
            log.info("serving %s from %s", classifier.card.architecture.backbone, self.model_path)
            self.ready.set()
            while True:
                message = comm.broadcast_obj(None, IMAGE_OWNER)
                if self.audit is not None:
                    self.audit(message)
                if message["op"] == STOP:
                    crypten.uninit()
                    self.on_exit(None)
                    return
                if message["op"] == INFER:
                    classifier.predict(None, int(message["batch"]))
        except BaseException as exc:  # noqa: BLE001 - every failure here is fatal to the party
            log.exception("MPC engine failed")
            self.on_exit(exc)
