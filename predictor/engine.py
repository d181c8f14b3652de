"""The MPC inference engine: one dedicated thread per party, fed by a job queue.

Party 0 takes its jobs from the clinic's store (case ids whose images sit in the clinic's
private image folder), shared with every other party pair (:mod:`predictor.lease_queue`). It
claims what is waiting (up to ``max_batch`` images, waiting at most ``batch_wait_ms`` for
company) under a lease, announces each batch to party 1 over the MPC channel — the announcement carries
only the batch size — and both parties then run the same encrypted forward pass. Only party 0
learns the output: it records the prediction in the clinic's store, whose outbox
then tells the marketplace the case needs review.

Every MPC call happens on this one thread, in the same order on both parties. A broken MPC
channel (the peer died) cannot be repaired inside a process — gloo's group is gone — so the
engine reports it as fatal and the supervisor restarts both parties; queued cases survive in
the database and run again (on another pair once their lease expires, or on this one when it
comes back).

Party 0 sends a heartbeat after ``heartbeat_s`` of silence and, when busy, at least that
often between batches; party 1 answers each with one bit: whether the model owner chose
another checkpoint (``predictor.switch_model``) that passed its checks. If so, both set up
that model as at start (party 1 announces its card and shares its weights) and the next
batch runs on it; no case is dropped or run twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from models.checkpoint import file_sha256, load_checkpoint
from models.inference import IMAGE_OWNER, MODEL_OWNER, EncryptedClassifier
from models.mpc import PartyConfig, init_party
from models.preprocessing import CLASS_NAMES, Preprocessing
from predictor.clinic import cases
from predictor.clinic.queue import ClaimedCase
from predictor.images import ImageStore
from predictor.inference_queue import ModelCard, QueueStatus
from predictor.lease_queue import LeasedCaseQueue
from predictor.metrics import PatientSideMetrics
from predictor.switch_model import ServingChoice

log = logging.getLogger(__name__)

INFER, PING, STOP = "infer", "ping", "stop"
#: A case taken this many times without an outcome (its pair died each time) is failed.
MAX_ATTEMPTS = 5


def served_model(passport: dict[str, Any] | None, backbone: str) -> cases.ServedModel | None:
    """The version party 1 announced (None: a party 1 from before passports said nothing)."""
    if not isinstance(passport, dict):
        return None
    attested = passport.get("attested") is True
    version = str(passport.get("model_version") or f"{backbone} (unattested)")[:80]
    passport_id = passport.get("passport_id") if attested else None
    return cases.ServedModel(version, str(passport_id) if passport_id else None, attested)


class PatientSideEngine:
    """Party 0: queue, batching, announcing, recording predictions (an ``InferenceQueue``)."""

    def __init__(
        self,
        party: PartyConfig,
        sessions: sessionmaker[Session],
        image_store: ImageStore,
        jobs: LeasedCaseQueue,
        *,
        max_batch: int,
        batch_wait_ms: float,
        heartbeat_s: float,
        metrics: PatientSideMetrics,
        on_recorded: Callable[[list[str]], None],
        on_exit: Callable[[BaseException | None], None],
    ) -> None:
        self.party = party
        self.sessions = sessions
        self.image_store = image_store
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.heartbeat_s = heartbeat_s
        self.metrics = metrics
        #: Called (on the MPC thread) with the ids of cases whose outcome was just recorded.
        self.on_recorded = on_recorded
        self.on_exit = on_exit
        self.jobs = jobs
        self._ready = threading.Event()
        self._batches = 0
        self._images = 0
        self._card: ModelCard | None = None
        self._served: cases.ServedModel | None = None
        self._thread = threading.Thread(target=self._run, name="mpc-party-0", daemon=True)

    # -- InferenceQueue -----------------------------------------------------------------

    def submit(self, case_id: str) -> None:
        """Make a stored case claimable (by this pair or any other) and wake this worker."""
        self.jobs.submit(case_id)

    def pending(self) -> int:
        return self.jobs.pending()

    def ready(self) -> bool:
        return self._ready.is_set()

    def status(self) -> QueueStatus:
        return QueueStatus(self.ready(), self.pending(), self._batches, self._images, self._card)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> bool:
        """Close the queue (the thread tells party 1 to stop); True once the thread ended."""
        self.jobs.close()
        self._thread.join(timeout=30)
        return not self._thread.is_alive()

    # -- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            crypten = init_party(self.party)
            comm = crypten.communicator.get()
            classifier = self._adopt(EncryptedClassifier(crypten, IMAGE_OWNER))
            self.jobs.start()
            self._ready.set()
            synced = time.monotonic()
            while True:
                batch = self.jobs.next_batch(self.max_batch, self.batch_wait_s, self.heartbeat_s)
                if batch is None:
                    comm.broadcast_obj({"op": STOP}, IMAGE_OWNER)
                    crypten.uninit()
                    return
                if not batch or time.monotonic() - synced >= self.heartbeat_s:
                    # a heartbeat, idle or busy: party 1 answers whether it serves another
                    # model from now on (predictor.switch_model), and if so, sets it up
                    comm.broadcast_obj({"op": PING}, IMAGE_OWNER)
                    if comm.broadcast_obj(None, MODEL_OWNER):
                        classifier = self._adopt(EncryptedClassifier(crypten, IMAGE_OWNER))
                    synced = time.monotonic()
                if batch:
                    self._run_batch(comm, classifier, batch)
        except BaseException as exc:  # noqa: BLE001 - every failure here is fatal to the party
            log.exception("MPC engine failed")
            self.on_exit(exc)

    def _adopt(self, classifier: EncryptedClassifier) -> EncryptedClassifier:
        """Serve ``classifier`` (party 1's card just announced) from the next batch on."""
        architecture = classifier.card.architecture
        self._served = served_model(classifier.card.passport, architecture.backbone)
        served = self._served
        self._card = ModelCard(
            architecture.backbone,
            classifier.card.model_sha256,
            served.model_version if served else None,
            served.passport_id if served else None,
            served.attested if served else None,
        )
        self.preprocessing = Preprocessing(architecture.image_size)
        log.info(
            "encrypted %s model ready (sha256 %s…)", self._card.backbone, self._card.sha256[:12]
        )
        return classifier

    def _run_batch(
        self, comm: Any, classifier: EncryptedClassifier, claimed: list[ClaimedCase]
    ) -> None:
        images, ready = [], []
        batch = [c.case_id for c in claimed]
        for case in claimed:
            case_id = case.case_id
            found = self.image_store.find(case_id)
            try:
                if case.attempts > MAX_ATTEMPTS:
                    raise ValueError(f"no outcome after {MAX_ATTEMPTS} attempts")
                if found is None:
                    raise FileNotFoundError("image missing from party 0's store")
                images.append(self.preprocessing.tensor_from_path(found[0]))
                ready.append(case_id)
            except (OSError, ValueError) as exc:
                log.error("case %s cannot be run: %s", case_id, exc)
                with self.sessions() as session:
                    cases.record_inference_failure(
                        session, case_id, reason=str(exc), now=datetime.now(UTC)
                    )
                self.metrics.inference_failures.inc()
        if ready:
            self._infer(comm, classifier, ready, images)
        self.jobs.done(claimed)
        finished = datetime.now(UTC)
        for case in claimed:
            if case.case_id in ready:
                seconds = (finished - case.submitted_at).total_seconds()
                self.metrics.prediction_latency.observe(seconds)
        self.on_recorded(batch)

    def _infer(
        self,
        comm: Any,
        classifier: EncryptedClassifier,
        ready: list[str],
        images: list[torch.Tensor],
    ) -> None:
        assert self._card is not None
        started = time.perf_counter()
        comm.broadcast_obj({"op": INFER, "batch": len(ready)}, IMAGE_OWNER)
        predictions = classifier.predict(torch.stack(images), len(ready))
        assert predictions is not None  # party 0 is the one that learns the output
        seconds = time.perf_counter() - started
        now = datetime.now(UTC)
        with self.sessions() as session:
            for case_id, prediction in zip(ready, predictions, strict=True):
                cases.record_prediction(
                    session,
                    case_id,
                    label=CLASS_NAMES[prediction.label],
                    confidence=prediction.confidence,
                    backbone=self._card.backbone,
                    model_sha256=self._card.sha256,
                    now=now,
                    worker=self.jobs.worker,
                    unfamiliar=prediction.unfamiliar,
                    model=self._served,
                )
        self._batches += 1
        self._images += len(ready)
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.batch_size.observe(len(ready))
        self.metrics.predictions.inc(len(ready))
        log.info("encrypted batch of %d in %.3f s", len(ready), seconds)
        # the next batch's offline phase (comparison keys, triples), before it arrives
        classifier.prepare(len(ready))


class ModelSideEngine:
    """Party 1: holds the checkpoint, follows party 0's announcements."""

    def __init__(
        self,
        party: PartyConfig,
        model_path: Path,
        *,
        on_exit: Callable[[BaseException | None], None],
        audit: Callable[[dict[str, Any]], None] | None = None,
        passport: dict[str, Any] | None = None,
        choice: ServingChoice | None = None,
    ) -> None:
        self.party = party
        self.model_path = model_path
        #: the model owner's later choices (``predictor.switch_model``), read at heartbeats
        self.choice = choice
        #: what party 0 is told about the version (checked against the chain before serving)
        self.passport = passport
        self.on_exit = on_exit
        self.audit = audit
        self.ready = threading.Event()
        #: Set by the MPC thread just before it reports its end (STOP or a failure).
        self._finishing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpc-party-1", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self) -> bool:
        """Give the MPC thread time to end (party 0's STOP is usually on its way); True if it did.

        A thread still waiting in a gloo receive cannot be interrupted: the caller must then
        leave without finalizing the interpreter (see :func:`predictor.party.run_party`).
        """
        self._thread.join(timeout=30 if self._finishing.is_set() else 5)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            # Read the checkpoint before the rendezvous: a bad file fails fast, not mid-protocol.
            checkpoint = load_checkpoint(self.model_path)
            crypten = init_party(self.party)
            comm = crypten.communicator.get()
            classifier = EncryptedClassifier(
                crypten, MODEL_OWNER, checkpoint, file_sha256(self.model_path), self.passport
            )
            log.info("serving %s from %s", classifier.card.architecture.backbone, self.model_path)
            self.ready.set()
            serving = self.model_path
            while True:
                message = comm.broadcast_obj(None, IMAGE_OWNER)
                if self.audit is not None:
                    self.audit(message)
                if message["op"] == PING:
                    switch = None if self.choice is None else self.choice.wanted(serving)
                    comm.broadcast_obj(switch is not None, MODEL_OWNER)
                    if switch is not None:
                        classifier = EncryptedClassifier(
                            crypten, MODEL_OWNER, switch.checkpoint, switch.sha256, switch.passport
                        )
                        serving = switch.path
                        log.info(
                            "now serving %s from %s (sha256 %s…)",
                            classifier.card.architecture.backbone, serving, switch.sha256[:12],
                        )  # fmt: skip
                if message["op"] == STOP:
                    self._finishing.set()
                    crypten.uninit()
                    self.on_exit(None)
                    return
                if message["op"] == INFER:
                    classifier.predict(None, int(message["batch"]))
                    classifier.prepare(int(message["batch"]))
        except BaseException as exc:  # noqa: BLE001 - every failure here is fatal to the party
            log.exception("MPC engine failed")
            self._finishing.set()
            self.on_exit(exc)
