"""One party's side of the encrypted classifier: set up once, then one call per batch.

Who holds what in plaintext:
* party 1 (model owner) — the checkpoint; it announces only the public
  ``ModelCard`` (architecture + checkpoint digest) and secret-shares the folded weights;
* party 0 (patient side) — the preprocessed images; it secret-shares them and is the only
  party that learns the revealed output (the scaled logit difference, see ``models.encrypted``).

Both parties must make the same calls in the same order (every MPC operation is a joint
protocol step); the batch size is public.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from models.checkpoint import Checkpoint, file_sha256, load_checkpoint
from models.encrypted import (
    Prediction,
    TensorLike,
    fold,
    forward,
    share_images,
    share_parameters,
)
from models.nets import Architecture

MODEL_OWNER = 1
IMAGE_OWNER = 0


@dataclass(frozen=True)
class ModelCard:
    """What party 1 tells party 0 about its model: public by design."""

    architecture: Architecture
    model_sha256: str


class EncryptedClassifier:
    def __init__(
        self,
        crypten: ModuleType,
        rank: int,
        checkpoint: Checkpoint | None = None,
        model_sha256: str = "",
    ) -> None:
        if (rank == MODEL_OWNER) != (checkpoint is not None):
            raise ValueError("exactly the model owner (party 1) passes the checkpoint")
        self.crypten = crypten
        self.rank = rank
        comm = crypten.communicator.get()
        card = None
        if checkpoint is not None:  # party 1
            card = {"architecture": checkpoint.architecture.to_dict(), "model_sha256": model_sha256}
        card = comm.broadcast_obj(card, MODEL_OWNER)
        self.card = ModelCard(Architecture(**card["architecture"]), card["model_sha256"])
        model_params = None
        if checkpoint is not None:
            model_params = fold(checkpoint.model(), checkpoint.architecture, checkpoint.temperature)
        self.encrypted_model: dict[str, TensorLike] = share_parameters(
            crypten, self.card.architecture, model_params, rank
        )

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
        revealed = forward(self.card.architecture, self.encrypted_model, image_share)
        plain = revealed.get_plain_text(dst=IMAGE_OWNER)
        return None if plain is None else plain.view(-1)

    def predict(self, images: torch.Tensor | None, batch_size: int) -> list[Prediction] | None:
        differences = self.logit_differences(images, batch_size)
        if differences is None:
            return None
        return [Prediction.from_logit_difference(float(d)) for d in differences]


@dataclass(frozen=True)
class ForwardCost:
    """Median cost of one encrypted forward of a batch, as one party measured it."""

    seconds: float
    all_seconds: tuple[float, ...]  # every timed repeat, rounded to 0.1 ms
    rounds: float  # communication rounds
    bytes: float  # bytes this party sent


def measure_forward(classifier: EncryptedClassifier, batch: int, reps: int) -> ForwardCost:
    """Median seconds, rounds and bytes of ``reps`` encrypted forwards on random images.

    Both parties call it (each measures its own side); one warm-up pass is not counted.
    """
    crypten = classifier.crypten
    comm = crypten.communicator.get()
    crypten.cfg.communicator.verbose = True
    images = None
    if classifier.rank == IMAGE_OWNER:
        images = torch.randn(batch, *classifier.image_shape)
    classifier.logit_differences(images, batch)
    times: list[float] = []
    rounds: list[float] = []
    sent: list[float] = []
    for _ in range(reps):
        comm.reset_communication_stats()
        started = time.perf_counter()
        classifier.logit_differences(images, batch)
        times.append(time.perf_counter() - started)
        stats = comm.get_communication_stats()
        rounds.append(stats["rounds"])
        sent.append(stats["bytes"])
    return ForwardCost(
        seconds=statistics.median(times),
        all_seconds=tuple(round(t, 4) for t in times),
        rounds=statistics.median(rounds),
        bytes=statistics.median(sent),
    )
