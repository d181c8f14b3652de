"""The plaintext training loop: mini-batch Adam with a cosine schedule, best (or last) epoch kept.

By default (``keep="best"``) the epoch kept is the one with the lowest loss on the calibration
split (held out from the gradient steps), which also guards the quadratic-activation LeNet
against a late blow-up; ``keep="last"`` keeps the last epoch (no early stopping).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from training.data import augment, augment_robust

log = logging.getLogger(__name__)


#: which epoch's weights training keeps
KEEP_EPOCH = ("best", "last")


@dataclass(frozen=True)
class LoopConfig:
    max_epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: bool = True
    #: ``basic`` (flips, shifts) or ``robust`` (+ rotation, scale, contrast, bias field, noise)
    augmentation: str = "robust"
    seed: int = 0
    progress: bool = True
    grad_clip: float = 5.0
    #: ``best``: the weights of the epoch with the lowest calibration loss (the training loss
    #: when there is no calibration split); ``last``: the last epoch's (no early stopping)
    keep: str = "best"
    #: with a teacher: the weight of the distillation term and the temperature of both softmaxes
    distill_weight: float = 0.5
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.keep not in KEEP_EPOCH:
            raise ValueError(f"unknown keep {self.keep!r}; choose from {KEEP_EPOCH}")


@dataclass(frozen=True)
class EpochRecord:
    """Losses and accuracies after one epoch (``nan`` for an empty split)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    calibration_loss: float
    calibration_accuracy: float
    eval_loss: float
    eval_accuracy: float


@dataclass(frozen=True)
class History:
    """Per-epoch figures plus the epoch whose weights were kept."""

    epochs: tuple[EpochRecord, ...]
    best_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(e) for e in self.epochs], "best_epoch": self.best_epoch}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits of ``model`` in eval mode for a stacked ``N x 1 x S x S`` tensor."""
    model.eval()
    if len(images) == 0:
        return torch.empty(0, 2)
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    logits = predict_logits(model, images)
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


def _distilled(
    loss: torch.Tensor, logits: torch.Tensor, teacher: nn.Module, x: torch.Tensor,
    config: LoopConfig,
) -> torch.Tensor:  # fmt: skip
    t = config.distill_temperature
    with torch.no_grad():
        target = nn.functional.softmax(teacher(x) / t, dim=1)
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(logits / t, dim=1), target, reduction="batchmean"
    )
    return (1.0 - config.distill_weight) * loss + config.distill_weight * t * t * kl


def train(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    calib_data: tuple[torch.Tensor, torch.Tensor],
    eval_data: tuple[torch.Tensor, torch.Tensor],
    config: LoopConfig,
    teacher: nn.Module | None = None,
) -> History:
    """Train ``model`` in place; eval figures are recorded for the curves, never used to choose.

    With a ``teacher`` the loss also pulls the model's softened outputs towards the teacher's
    on the same augmented images (knowledge distillation, Hinton et al. 2015):
    ``(1 - w) CE + w T^2 KL(teacher_T || model_T)``.
    """
    if teacher is not None:
        teacher.eval()
    images, labels = train_data
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.max_epochs * math.ceil(len(images) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    epochs: list[EpochRecord] = []
    best_epoch = 0
    best_loss, best_state = math.inf, copy.deepcopy(model.state_dict())
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        batches = [
            order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
        ]
        # BatchNorm cannot train on a batch of one: fold a trailing singleton into its neighbour.
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2] = torch.cat(batches[-2:])
            batches.pop()
        total_loss, total_correct = 0.0, 0
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{config.max_epochs}",
            unit="batch",
            disable=not config.progress,
            leave=False,
        )
        for batch in bar:
            x, y = images[batch], labels[batch]
            if config.augment:
                if config.augmentation == "basic":
                    x = augment(x, generator)
                else:
                    strength = 1.0 if config.augmentation == "robust" else 0.5
                    x = augment_robust(x, generator, strength=strength)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if teacher is not None:
                loss = _distilled(loss, logits, teacher, x, config)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
            total_correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        calib_loss, calib_acc = _evaluate(model, *calib_data)
        eval_loss, eval_acc = _evaluate(model, *eval_data)
        record = EpochRecord(
            epoch=epoch,
            train_loss=total_loss / len(images),
            train_accuracy=total_correct / len(images),
            calibration_loss=calib_loss,
            calibration_accuracy=calib_acc,
            eval_loss=eval_loss,
            eval_accuracy=eval_acc,
        )
        epochs.append(record)
        log.info(
            "epoch %d: train loss %.4f acc %.3f | calibration loss %.4f acc %.3f | eval acc %.3f",
            epoch, record.train_loss, record.train_accuracy, calib_loss, calib_acc, eval_acc,
        )  # fmt: skip
        selection_loss = calib_loss if math.isfinite(calib_loss) else record.train_loss
        if config.keep == "last":
            best_epoch = epoch
        elif selection_loss < best_loss:
            best_loss, best_state = selection_loss, copy.deepcopy(model.state_dict())
            best_epoch = epoch
    if config.keep == "best":
        model.load_state_dict(best_state)
    model.eval()
    return History(tuple(epochs), best_epoch)
