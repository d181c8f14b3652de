"""Differential privacy for training: DP-SGD with Opacus, its accountant, frozen public BatchNorm.

* **Mechanism.** Opacus 1.6 DP-SGD: per-example gradients clipped to ``max_grad_norm``,
  Gaussian noise of ``noise_multiplier x max_grad_norm`` added to their sum, batches drawn by
  **Poisson sampling** (each image independently with probability ``batch_size / N``), which
  is what the accountant's subsampling analysis assumes.
* **Accountant.** Rényi DP (``opacus.accountants.RDPAccountant``): the accountant both opacus
  and Google's dp-accounting implement, so the reported ε is checked independently in the
  tests. PRV would give a slightly smaller ε for the same noise; RDP's ε is an upper bound,
  and the one reported is the accountant's, never the target.
* **Budget.** The noise multiplier is chosen so that the planned number of steps spends at
  most the target ε; a run that would need more steps stops before exceeding it, and a
  target too small for even one useful step is refused (:class:`PrivacyBudgetError`).
* **BatchNorm.** Running statistics computed on private images leak outside the guarantee.
  So the statistics come from a *public* set: images the synthetic generator draws from a
  random stream of its own (never a hospital's or the training folder's), and the BatchNorm
  layers are then frozen (eval mode, no gradient). They still fold into the convolutions of
  the encrypted program exactly as before.
* **Public pre-training** (optional, :func:`public_pretrain`). From scratch, DP-SGD on a few
  hundred images learns nothing at ε ≤ 8 (measured: eval AUC at chance). The usual remedy is
  to start from a model trained on public data: the public generated images train the
  network first, without DP and without cost to ε (no private image is involved), and DP-SGD
  fine-tunes it on the private images. ε covers the private images only, which is all it
  has to cover.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.nets import Architecture
from models.preprocessing import Preprocessing
from training.data import augment, augment_robust
from training.loop import EpochRecord, History, LoopConfig, predict_logits, train

log = logging.getLogger(__name__)

ACCOUNTANT = "rdp"
ACCOUNTANT_NOTE = (
    "Renyi DP accountant (opacus RDPAccountant, orders 1.1-63), Poisson subsampled Gaussian "
    "mechanism; an upper bound on epsilon, checked against dp-accounting's RdpAccountant"
)
#: Random stream of the public images: the generator's train/eval splits use streams 1/2.
PUBLIC_STREAM = 7
PUBLIC_IMAGES = 256
#: Above this noise multiplier per expected batch image, the noise on each averaged gradient
#: coordinate exceeds the whole clipped gradient: training is noise, so the budget is refused.
MAX_NOISE_PER_EXAMPLE = 1.0


class PrivacyBudgetError(ValueError):
    """The privacy budget cannot be met (too small, or spent); the message says why."""


@dataclass(frozen=True)
class DPConfig:
    """What the data owner allows: (ε, δ) and the per-example gradient clipping norm."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"--dp-epsilon must be a finite number > 0, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"--dp-delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")


#: The accountant's state: (noise multiplier, sample rate, steps) per run of equal steps, as
#: opacus's RDPAccountant keeps it. JSON-able, so a hospital can keep it across rounds.
AccountantHistory = list[tuple[float, float, int]]


def epsilon_spent(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """The RDP accountant's ε for ``history`` at ``delta`` (0 for no steps)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not accountant.history:
        return 0.0
    with warnings.catch_warnings():  # "optimal order is the largest alpha": only for huge noise
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def history_to_json(history: Sequence[tuple[float, float, int]]) -> str:
    return json.dumps([[float(s), float(q), int(n)] for s, q, n in history])


def history_from_json(text: str) -> AccountantHistory:
    return [(float(s), float(q), int(n)) for s, q, n in json.loads(text)]


@dataclass(frozen=True)
class DPPlan:
    """The noise that makes ``steps`` Poisson-sampled steps spend at most the target ε."""

    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    steps: int


def sample_rate(dataset_size: int, batch_size: int) -> float:
    """Poisson sampling probability as opacus's ``DPDataLoader`` sets it: 1 / batches per epoch."""
    if dataset_size < 1:
        raise ValueError("no training images")
    return 1.0 / math.ceil(dataset_size / batch_size)


def steps_per_epoch(rate: float) -> int:
    """Steps in one expected pass over the data (opacus's ``DPDataLoader`` length)."""
    return max(1, round(1 / rate))


def plan(
    dp: DPConfig,
    *,
    dataset_size: int,
    batch_size: int,
    epochs: int,
    spent: Sequence[tuple[float, float, int]] = (),
) -> DPPlan:
    """Noise for ``epochs`` epochs such that ``spent`` plus them stays within ``dp.epsilon``.

    Raises :class:`PrivacyBudgetError` when no useful noise level meets the budget.
    """
    rate = sample_rate(dataset_size, batch_size)
    per_epoch = steps_per_epoch(rate)
    steps = epochs * per_epoch
    limit = MAX_NOISE_PER_EXAMPLE * rate * dataset_size  # = expected batch size
    floor_eps = epsilon_spent([*spent, (limit, rate, 1)], dp.delta)
    if floor_eps > dp.epsilon:
        raise PrivacyBudgetError(
            f"privacy budget too small: epsilon {dp.epsilon:g} at delta {dp.delta:g} does not "
            f"allow even one step (one step at the largest useful noise multiplier {limit:.3g} "
            f"- noise as large as the whole clipped gradient - already spends epsilon "
            f"{floor_eps:.3g}{' with what is already spent' if spent else ''}); "
            "raise --dp-epsilon or --dp-delta, or use a larger --batch-size"
        )
    low, high = 0.0, limit
    if epsilon_spent([*spent, (high, rate, steps)], dp.delta) > dp.epsilon:
        fits = _steps_that_fit(dp, rate, limit, spent, steps)
        raise PrivacyBudgetError(
            f"privacy budget too small for {steps} steps ({epochs} epoch(s) of {per_epoch}): "
            f"epsilon {dp.epsilon:g} at delta {dp.delta:g} allows at most {fits} step(s) at the "
            f"largest useful noise multiplier {limit:.3g}; train fewer epochs or raise the budget"
        )
    for _ in range(40):  # bisection: the smallest noise whose epsilon is within the budget
        mid = (low + high) / 2
        if mid > 0 and epsilon_spent([*spent, (mid, rate, steps)], dp.delta) <= dp.epsilon:
            high = mid
        else:
            low = mid
        if high - low < 1e-3 * high:
            break
    return DPPlan(noise_multiplier=high, sample_rate=rate, steps_per_epoch=per_epoch, steps=steps)


def _steps_that_fit(
    dp: DPConfig, rate: float, sigma: float, spent: Sequence[tuple[float, float, int]], most: int
) -> int:
    low, high = 1, most  # one step fits (checked by the caller); ``most`` does not
    while high - low > 1:
        mid = (low + high) // 2
        if epsilon_spent([*spent, (sigma, rate, mid)], dp.delta) <= dp.epsilon:
            low = mid
        else:
            high = mid
    return low


# ---------------------------------------------------------------------- public BatchNorm


def public_images(arch: Architecture, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` balanced generated images from the public stream (never anyone's data)."""
    images, labels = _public_images(arch.image_size, count, seed)
    return images.clone(), labels.clone()


@functools.lru_cache(maxsize=4)
def _public_images(image_size: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from training.synthetic.difficulty import Difficulty
    from training.synthetic.render import render_slice

    preprocessing = Preprocessing(image_size)
    images, labels = [], []
    for i in range(count):
        tumour = i % 2 == 1
        rng = np.random.default_rng([seed, PUBLIC_STREAM, int(tumour), i])
        pixels = render_slice(tumour, Difficulty(), rng).pixels
        images.append(preprocessing.tensor(Image.fromarray(pixels, mode="L")))
        labels.append(int(tumour))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def public_pretrain(
    model: nn.Module, public: tuple[torch.Tensor, torch.Tensor], epochs: int, seed: int
) -> History:
    """Train ``model`` on the public images for ``epochs`` epochs, without DP (public data
    costs no ε), mild augmentation, the last epoch kept; BatchNorm learns public statistics."""
    empty = (public[0][:0], public[1][:0])
    config = LoopConfig(
        max_epochs=epochs, batch_size=32, lr=1e-3, augment=True, augmentation="mild",
        seed=seed, progress=False, keep="last",
    )  # fmt: skip
    history = train(model, public, empty, empty, config)
    model.eval()
    return history


def public_pretrain_record(count: int, epochs: int, source: str) -> str:
    """The provenance line for :func:`public_pretrain` on ``count`` images of ``source``."""
    return (
        f"pre-trained without DP for {epochs} epochs on {count} {source} (mild augmentation, "
        "the last epoch kept): no private image, so no epsilon spent"
    )


def generated_public_source(seed: int) -> str:
    """What :func:`public_images` draws from, for provenance."""
    return (
        f"public generated images (training.synthetic, standard difficulty, seed {seed}, "
        f"random stream {PUBLIC_STREAM})"
    )


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def set_public_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """BatchNorm running statistics = the exact mean/variance over ``images`` (public)."""
    layers = batchnorm_layers(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    for i in range(0, len(images), batch_size):
        model(images[i : i + batch_size])
    for m, momentum in zip(layers, saved, strict=True):
        m.momentum = momentum
    model.eval()


def freeze_batchnorm(model: nn.Module) -> None:
    """Eval mode and no gradient for every BatchNorm layer (what Opacus accepts)."""
    for m in batchnorm_layers(model):
        m.eval()
        m.requires_grad_(False)


def public_batchnorm_record(count: int, seed: int) -> str:
    return (
        f"frozen: running statistics from {count} {generated_public_source(seed)}: no private "
        "image; BatchNorm layers in eval mode without gradient; they fold into the encrypted "
        "program"
    )


# ---------------------------------------------------------------------- training


@dataclass(frozen=True)
class DPResult:
    """What a DP training run spent: the accountant's ε and everything that determines it."""

    history: History
    accountant_history: AccountantHistory
    epsilon: float
    plan: DPPlan
    dp: DPConfig
    steps_taken: int
    stopped_early: bool = False
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The provenance's ``differential_privacy`` entry (minus the BatchNorm line)."""
        return {
            "epsilon": self.epsilon,
            "target_epsilon": self.dp.epsilon,
            "delta": self.dp.delta,
            "max_grad_norm": self.dp.max_grad_norm,
            "noise_multiplier": self.plan.noise_multiplier,
            "sample_rate": self.plan.sample_rate,
            "sampling": "poisson",
            "steps": self.steps_taken,
            "accountant": ACCOUNTANT,
            "accountant_note": ACCOUNTANT_NOTE,
            "accountant_history": [list(h) for h in self.accountant_history],
            "library": f"opacus {_opacus_version()}",
            "stopped_early": self.stopped_early,
            "notes": self.notes,
            "plan": asdict(self.plan),
        }


def _opacus_version() -> str:
    import opacus

    return str(opacus.__version__)


def dp_train(
    model: nn.Module,
    train_data: tuple[torch.Tensor, torch.Tensor],
    calib_data: tuple[torch.Tensor, torch.Tensor],
    eval_data: tuple[torch.Tensor, torch.Tensor],
    config: LoopConfig,
    dp: DPConfig,
    *,
    spent: Sequence[tuple[float, float, int]] = (),
    dp_plan: DPPlan | None = None,
) -> DPResult:
    """DP-SGD (Adam on privatised gradients) for ``config.max_epochs`` epochs, in place.

    ``spent``: the accountant's history from earlier training on the same data (a hospital's
    earlier rounds); ``dp_plan``: the noise fixed for the whole run (else planned for these
    epochs). BatchNorm must already hold public statistics; it is frozen here. The last
    epoch's weights are kept: choosing an epoch by a private split's loss is outside the
    guarantee. Training stops before a step that would take ε past the target.
    """
    from opacus import PrivacyEngine

    images, labels = train_data
    dp_plan = dp_plan or plan(
        dp, dataset_size=len(images), batch_size=config.batch_size, epochs=config.max_epochs,
        spent=spent,
    )  # fmt: skip
    model.train()
    freeze_batchnorm(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(config.seed + 1),
    )
    with warnings.catch_warnings():  # secure_mode needs torchcsprng (none for this torch)
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=False)
    engine.accountant.history = [(float(s), float(q), int(n)) for s, q, n in spent]
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=dp_plan.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
    )
    epochs: list[EpochRecord] = []
    steps_taken, stopped = 0, False
    for epoch in range(1, config.max_epochs + 1):
        private_model.train()
        freeze_batchnorm(model)  # train() switched them back to batch statistics
        total_loss, total_correct, seen = 0.0, 0, 0
        for x, y in private_loader:
            next_eps = epsilon_spent(
                [*engine.accountant.history, (dp_plan.noise_multiplier, dp_plan.sample_rate, 1)],
                dp.delta,
            )
            if next_eps > dp.epsilon * (1 + 1e-9):
                stopped = True
                log.warning(
                    "privacy budget reached after %d step(s): epsilon %.3f; stopping",
                    steps_taken, engine.accountant.get_epsilon(dp.delta),
                )  # fmt: skip
                break
            if len(x) == 0:  # an empty Poisson batch: no update, counted all the same
                engine.accountant.step(
                    noise_multiplier=dp_plan.noise_multiplier, sample_rate=dp_plan.sample_rate
                )
                steps_taken += 1
                continue
            if config.augment:
                if config.augmentation == "basic":
                    x = augment(x, generator)
                else:
                    strength = 1.0 if config.augmentation == "robust" else 0.5
                    x = augment_robust(x, generator, strength=strength)
            logits = private_model(x)
            loss = nn.functional.cross_entropy(logits, y)
            private_optimizer.zero_grad()
            loss.backward()
            private_optimizer.step()
            steps_taken += 1
            total_loss += loss.item() * len(y)
            total_correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        calib = _evaluate(model, *calib_data)
        ev = _evaluate(model, *eval_data)
        epochs.append(
            EpochRecord(
                epoch=epoch,
                train_loss=total_loss / seen if seen else math.nan,
                train_accuracy=total_correct / seen if seen else math.nan,
                calibration_loss=calib[0],
                calibration_accuracy=calib[1],
                eval_loss=ev[0],
                eval_accuracy=ev[1],
            )
        )
        log.info(
            "DP epoch %d: train loss %.4f | calibration acc %.3f | eval acc %.3f | epsilon %.3f",
            epoch, epochs[-1].train_loss, calib[1], ev[1],
            engine.accountant.get_epsilon(dp.delta),
        )  # fmt: skip
        if stopped:
            break
    history = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
    private_model._close()  # removes Opacus's hooks from ``model``
    model.eval()
    _strip_grad_samples(model)
    return DPResult(
        history=History(tuple(epochs), len(epochs)),
        accountant_history=history,
        epsilon=epsilon_spent(history, dp.delta),
        plan=dp_plan,
        dp=dp,
        steps_taken=steps_taken,
        stopped_early=stopped,
    )


def _strip_grad_samples(model: nn.Module) -> None:
    """Opacus leaves per-example gradients and hooks' state on the parameters: drop them."""
    for p in model.parameters():
        for name in ("grad_sample", "summed_grad"):
            if hasattr(p, name):
                setattr(p, name, None)
        p.grad = None


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    if len(labels) == 0:
        return math.nan, math.nan
    logits = predict_logits(model, images)
    return (
        nn.functional.cross_entropy(logits, labels).item(),
        (logits.argmax(1) == labels).float().mean().item(),
    )
