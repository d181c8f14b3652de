"""One party's side of the encrypted classifier: set up once, then one call per batch.

Who holds what in plaintext:
* party 1 (model owner) — the checkpoint; it announces only the public
  ``ModelCard`` (architecture + checkpoint digest) and secret-shares the folded weights;
* party 0 (patient side) — the preprocessed images; it secret-shares them and is the only
  party that learns the revealed output: the scaled logit difference (see
  ``models.encrypted``) and, when the checkpoint carries an unfamiliarity detector, one bit
  per image, unfamiliar or not (``models.encrypted_unfamiliarity``).

Both parties must make the same calls in the same order (every MPC operation is a joint
protocol step); the batch size is public.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from models import weight_masks
from models.checkpoint import Checkpoint, file_sha256, load_checkpoint
from models.encrypted import (
    Prediction,
    TensorLike,
    fold,
    forward,
    local,
    share_images,
    share_parameters,
)
from models.encrypted_unfamiliarity import (
    DetectorCard,
    block_sizes,
    classify,
    fold_detector,
    share_detector,
)
from models.nets import Architecture
from models.sign_gate import Ring, deal_ahead, taken
from models.weight_masks import mark_constant

MODEL_OWNER = 1
IMAGE_OWNER = 0


@dataclass(frozen=True)
class ModelCard:
    """What party 1 tells party 0 about its model: public by design."""

    architecture: Architecture
    model_sha256: str
    #: the unfamiliarity detector's public shape (None: the model has none)
    detector: DetectorCard | None = None
    #: screening operating point on the calibrated P(tumor) (public, in the provenance too)
    decision_threshold: float = 0.5
    #: which version this is, as party 1 checked it against its passport on chain before
    #: serving: ``{"model_version", "passport_id", "attested"}`` (None: not announced)
    passport: dict[str, Any] | None = None


class EncryptedClassifier:
    def __init__(
        self,
        crypten: ModuleType,
        rank: int,
        checkpoint: Checkpoint | None = None,
        model_sha256: str = "",
        passport: dict[str, Any] | None = None,
    ) -> None:
        if (rank == MODEL_OWNER) != (checkpoint is not None):
            raise ValueError("exactly the model owner (party 1) passes the checkpoint")
        self.crypten = crypten
        self.rank = rank
        comm = crypten.communicator.get()
        card = None
        if checkpoint is not None:  # party 1
            detector = checkpoint.detector
            card = {
                "architecture": checkpoint.architecture.to_dict(),
                "model_sha256": model_sha256,
                "detector": None if detector is None else DetectorCard.of(detector).to_dict(),
                "decision_threshold": checkpoint.decision_threshold,
                "passport": passport,
            }
        card = comm.broadcast_obj(card, MODEL_OWNER)
        detector_card = card.get("detector")
        self.card = ModelCard(
            Architecture(**card["architecture"]),
            card["model_sha256"],
            None if detector_card is None else DetectorCard(**detector_card),
            float(card.get("decision_threshold", 0.5)),
            card.get("passport"),
        )
        arch = self.card.architecture
        model = None if checkpoint is None else checkpoint.model()
        model_params = None
        if checkpoint is not None and model is not None:
            model_params = fold(model, checkpoint.architecture, checkpoint.temperature)
        self.encrypted_model: dict[str, TensorLike] = share_parameters(
            crypten, arch, model_params, rank
        )
        self.encrypted_detector: dict[str, TensorLike] | None = None
        if self.card.detector is not None:
            sizes = block_sizes(arch, self.card.detector.features)
            detector_params = None
            if checkpoint is not None and checkpoint.detector is not None:
                detector_params = fold_detector(checkpoint.detector, sizes)
            self.encrypted_detector = share_detector(
                crypten, self.card.detector, sizes, detector_params, rank
            )
        # served weights do not change: their Beaver masks are opened once (TFP)
        constants = [*self.encrypted_model.values(), *(self.encrypted_detector or {}).values()]
        mark_constant(crypten, constants)
        #: what the last forward dealt as it went, and for how many images: its
        #: comparisons per ring (models.sign_gate) and its products with kept weight masks
        self._last_forward: tuple[int, dict[Ring, int], list[weight_masks.Product]] | None = None

    def prepare(self, batch_size: int) -> None:
        """The offline phase of the next forward of ``batch_size`` images: deal now, before
        the images arrive, what the last forward of that size dealt as it went: the keys
        of its comparisons (``models.sign_gate.deal_ahead``) and the triples of its
        products with kept weight masks (``models.weight_masks.deal_ahead``). Both parties
        call it together; before a forward of that size it does nothing."""
        if self._last_forward is None or self._last_forward[0] != batch_size:
            return
        _, comparisons, products = self._last_forward
        comm = self.crypten.communicator.get()
        deal_ahead(comm, comparisons)
        weight_masks.deal_ahead(comm, products)

    @contextlib.contextmanager
    def _recording_dealt(self, batch_size: int) -> Iterator[None]:
        comm = self.crypten.communicator.get()
        before = taken(comm)
        with weight_masks.recording(comm) as products:
            yield
        after = taken(comm)
        comparisons = {ring: count - before.get(ring, 0) for ring, count in after.items()}
        self._last_forward = (batch_size, comparisons, products)

    @classmethod
    def for_party(
        cls, crypten: ModuleType, rank: int, checkpoint_path: Path | str
    ) -> EncryptedClassifier:
        """Party 1 reads the checkpoint at ``checkpoint_path``; party 0 never touches it."""
        if rank == MODEL_OWNER:
            return cls(
                crypten, rank, load_checkpoint(checkpoint_path), file_sha256(checkpoint_path)
            )
        return cls(crypten, rank)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self.card.architecture.image_size
        return (1, size, size)

    def logit_differences(
        self, images: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor | None:
        """Revealed ``(B,)`` scaled logit differences on party 0; ``None`` on party 1."""
        image_share = share_images(self.crypten, images, (batch_size, *self.image_shape), self.rank)
        with self._recording_dealt(batch_size):
            revealed = forward(self.card.architecture, self.encrypted_model, image_share)
        plain = revealed.get_plain_text(dst=IMAGE_OWNER)
        return None if plain is None else plain.view(-1)

    def outputs(
        self, images: torch.Tensor | None, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Party 0: revealed ``(B,)`` scaled logit differences and ``(B,)`` unfamiliar bits
        (None without a detector); party 1: None. Exactly these two are opened, to party 0,
        in one opening."""
        if self.encrypted_detector is None or self.card.detector is None:
            differences = self.logit_differences(images, batch_size)
            return None if differences is None else (differences, None)
        image_share = share_images(self.crypten, images, (batch_size, *self.image_shape), self.rank)
        with self._recording_dealt(batch_size):
            encrypted_difference, encrypted_flags = classify(
                self.card.architecture,
                self.encrypted_model,
                self.encrypted_detector,
                self.card.detector.features,
                image_share,
            )
        # one opening (one round) for both: column 0 the difference, column 1 the bit
        # classify encodes the flags like the difference, so both join locally on shares
        both: TensorLike = local(
            lambda d, f: torch.cat([d.reshape(-1, 1), f.reshape(-1, 1)], 1),
            encrypted_difference,
            encrypted_flags,
        )
        plain = both.get_plain_text(dst=IMAGE_OWNER)
        if plain is None:
            return None
        return plain[:, 0], plain[:, 1].round()

    def predict(self, images: torch.Tensor | None, batch_size: int) -> list[Prediction] | None:
        revealed = self.outputs(images, batch_size)
        if revealed is None:
            return None
        differences, flags = revealed
        threshold = self.card.decision_threshold
        return [
            Prediction.from_logit_difference(
                float(d), threshold, unfamiliar=flags is not None and bool(flags[i] > 0.5)
            )
            for i, d in enumerate(differences)
        ]


@dataclass(frozen=True)
class ForwardCost:
    """Median cost of one encrypted forward of a batch, as one party measured it."""

    seconds: float
    all_seconds: tuple[float, ...]  # every timed repeat, rounded to 0.1 ms
    rounds: float  # communication rounds
    bytes: float  # bytes this party sent, as CrypTen counts them (an all-reduce counts twice)
    #: bytes this party put on the peer link (payload and framing); None over gloo
    wire_bytes: float | None = None
    #: the offline phase before each forward (``EncryptedClassifier.prepare``: dealing the
    #: sign gate's keys and the kept-mask triples, input-independent): median seconds and
    #: bytes (the triples send nothing under TFP)
    offline_seconds: float = 0.0
    offline_bytes: float = 0.0


def measure_forward(
    classifier: EncryptedClassifier, batch: int, reps: int, *, unfamiliarity: bool = False
) -> ForwardCost:
    """Median seconds, rounds and bytes of ``reps`` encrypted forwards on random images.

    Both parties call it (each measures its own side); one warm-up pass is not counted.
    ``unfamiliarity``: the whole production program (classifier + unfamiliarity bit).
    Before each forward its offline phase runs (``EncryptedClassifier.prepare``), timed
    and counted apart: what the forward then costs is what a patient waits for.
    """
    crypten = classifier.crypten
    comm = crypten.communicator.get()
    crypten.cfg.communicator.verbose = True
    images = None
    if classifier.rank == IMAGE_OWNER:
        images = torch.randn(batch, *classifier.image_shape)
    run = classifier.outputs if unfamiliarity else classifier.logit_differences
    run(images, batch)
    link = getattr(comm, "peer_link", None)  # models.crypten_compat.use_peer_link
    times: list[float] = []
    rounds: list[float] = []
    sent: list[float] = []
    wire: list[float] = []
    offline_times: list[float] = []
    offline_sent: list[float] = []
    for _ in range(reps):
        comm.reset_communication_stats()
        started = time.perf_counter()
        classifier.prepare(batch)
        # party 0's large messages go out from a sender thread: wait until both parties
        # hold what was dealt, or its transfer would be timed as the forward's
        comm.all_reduce(torch.zeros(1, dtype=torch.long))
        offline_times.append(time.perf_counter() - started)
        offline_sent.append(comm.get_communication_stats()["bytes"])
        comm.reset_communication_stats()
        on_wire = link.bytes_sent if link is not None else 0
        started = time.perf_counter()
        run(images, batch)
        times.append(time.perf_counter() - started)
        stats = comm.get_communication_stats()
        rounds.append(stats["rounds"])
        sent.append(stats["bytes"])
        if link is not None:
            wire.append(link.bytes_sent - on_wire)
    return ForwardCost(
        seconds=statistics.median(times),
        all_seconds=tuple(round(t, 4) for t in times),
        rounds=statistics.median(rounds),
        bytes=statistics.median(sent),
        wire_bytes=statistics.median(wire) if wire else None,
        offline_seconds=statistics.median(offline_times),
        offline_bytes=statistics.median(offline_sent),
    )
