"""A hospital's side of the federation, free of Flower: its data, local training, calibration.

Everything here runs on the hospital's own host, inside its SuperNode's ClientApp. What
leaves the host is what these functions return: model arrays after local training, example
counts, the data set's content hash and size (claimed: the model owner cannot check them),
and, for calibration, summed negative log-likelihoods per temperature and per-bin counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.nets import Architecture, build_model
from models.preprocessing import Preprocessing
from training.calibration import reliability_bins, softmax
from training.data import DatasetError, ImageFolder, fingerprint, stratified_split
from training.loop import LoopConfig, predict_logits, train
from training.privacy import (
    AccountantHistory,
    DPConfig,
    DPPlan,
    DPResult,
    PrivacyBudgetError,
    dp_train,
    epsilon_spent,
    plan,
)

#: Ways a simulated hospital misbehaves, for the benchmark and the tests only; a real
#: hospital's node runs with ``none``.
SIMULATIONS = ("none", "flip-labels", "scale-update", "nan-update", "free-ride")
SCALE_FACTOR = 10.0
ECE_BINS = 10


@dataclass(frozen=True)
class SiteData:
    """One hospital's images, split into a local training part and a calibration part."""

    fingerprint: str
    counts: dict[str, int]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    calib_images: torch.Tensor
    calib_labels: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.train_labels) + len(self.calib_labels)


def load_site(
    data_dir: Path, arch: Architecture, *, calibration_fraction: float, seed: int
) -> SiteData:
    """Read and check the hospital's folder; :class:`DatasetError` says what is wrong."""
    folder = ImageFolder(Path(data_dir), Preprocessing(arch.image_size))
    counts = folder.class_counts()
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        raise DatasetError(f"{data_dir}: only one class ({', '.join(missing)}/ is empty)")
    keep, held = stratified_split(folder.labels, calibration_fraction, seed)
    return SiteData(
        fingerprint=fingerprint(folder.root, folder.samples),
        counts=counts,
        train_images=folder.images[keep],
        train_labels=folder.labels[keep],
        calib_images=folder.images[held],
        calib_labels=folder.labels[held],
    )


def to_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's state, in ``state_dict`` order, as numpy arrays (what goes on the wire)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def weight_mask(arch: Architecture) -> list[bool]:
    """Per array of :func:`to_arrays`: a trained weight (True) or a buffer such as BatchNorm's
    running statistics (False)."""
    model = build_model(arch)
    weights = {name for name, _ in model.named_parameters()}
    return [name in weights for name in model.state_dict()]


def from_arrays(arch: Architecture, arrays: Sequence[np.ndarray]) -> nn.Module:
    model = build_model(arch)
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for a model with {len(keys)} tensors")
    model.load_state_dict(
        {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays, strict=True)}
    )
    return model


@dataclass(frozen=True)
class LocalResult:
    arrays: list[np.ndarray]
    examples: int
    train_loss: float
    seconds: float
    #: with DP: the hospital's accountant after this round (its whole history in the run)
    privacy: DPResult | None = None

    def privacy_metrics(self) -> dict[str, float]:
        """What the hospital reports of its privacy spending (scalars, for Flower's metrics)."""
        if self.privacy is None:
            return {}
        p = self.privacy
        return {
            "dp_epsilon": p.epsilon,
            "dp_target_epsilon": p.dp.epsilon,
            "dp_delta": p.dp.delta,
            "dp_max_grad_norm": p.dp.max_grad_norm,
            "dp_noise_multiplier": p.plan.noise_multiplier,
            "dp_sample_rate": p.plan.sample_rate,
            "dp_steps_total": sum(n for _, _, n in p.accountant_history),
            "dp_steps_this_round": p.steps_taken,
        }


@dataclass(frozen=True)
class PrivateTraining:
    """A hospital's DP settings for one round: the run's budget, its total epochs (the noise
    is planned for all of them) and what its accountant has already spent in earlier rounds."""

    dp: DPConfig
    run_epochs: int
    spent: AccountantHistory


def local_train(
    arch: Architecture,
    global_arrays: Sequence[np.ndarray],
    site: SiteData,
    config: LoopConfig,
    simulate: str = "none",
    private: PrivateTraining | None = None,
) -> LocalResult:
    """Train the global model on the hospital's data for ``config.max_epochs`` epochs
    (DP-SGD when ``private``: BatchNorm stays at the owner's public statistics)."""
    import time

    if simulate not in SIMULATIONS:
        raise ValueError(f"unknown simulation {simulate!r}; choose from {SIMULATIONS}")
    started = time.perf_counter()
    examples = len(site.train_labels)
    if simulate == "free-ride":  # sends the global model back, claims its data size
        return LocalResult([np.array(a) for a in global_arrays], examples, math.nan, 0.0)
    model = from_arrays(arch, global_arrays)
    labels = 1 - site.train_labels if simulate == "flip-labels" else site.train_labels
    empty = (site.train_images[:0], site.train_labels[:0])
    privacy: DPResult | None = None
    if private is None:
        history = train(
            model, (site.train_images, labels), (site.calib_images, site.calib_labels), empty,
            config,
        )  # fmt: skip
    else:
        # The same noise every round, planned for the whole run; the spent history carries
        # the earlier rounds, so epsilon is the whole run's and a spent budget is refused.
        run_plan = plan(
            private.dp, dataset_size=examples, batch_size=config.batch_size,
            epochs=private.run_epochs,
        )  # fmt: skip
        refuse_when_spent(private.dp, run_plan, private.spent)
        privacy = dp_train(
            model, (site.train_images, labels), (site.calib_images, site.calib_labels), empty,
            config, private.dp, spent=private.spent, dp_plan=run_plan,
        )  # fmt: skip
        history = privacy.history
    arrays = to_arrays(model)
    if simulate == "scale-update":  # the boosted model-replacement attack
        arrays = [
            g + SCALE_FACTOR * (a - g) if np.issubdtype(a.dtype, np.floating) else a
            for a, g in zip(arrays, global_arrays, strict=True)
        ]
    elif simulate == "nan-update":
        arrays[0] = np.full_like(arrays[0], np.nan)
    last = history.epochs[-1].train_loss if history.epochs else math.nan
    return LocalResult(arrays, examples, last, time.perf_counter() - started, privacy)


def refuse_when_spent(dp: DPConfig, run_plan: DPPlan, spent: AccountantHistory) -> None:
    """:class:`PrivacyBudgetError` when not even one more step fits this hospital's budget."""
    one_more = [*spent, (run_plan.noise_multiplier, run_plan.sample_rate, 1)]
    if spent and epsilon_spent(one_more, dp.delta) > dp.epsilon:
        raise PrivacyBudgetError(
            f"this hospital's privacy budget is spent: epsilon {epsilon_spent(spent, dp.delta):.3f}"
            f" of {dp.epsilon:g} after {sum(n for _, _, n in spent)} steps; it trains no more"
        )


@dataclass(frozen=True)
class CalibrationStats:
    """Sums the model owner can add across hospitals without seeing any one image's output."""

    count: int
    #: summed NLL of the calibration split under ``softmax(logits / T)``, one per temperature
    nll_sums: list[float]
    #: per confidence bin at the chosen temperature: (count, summed confidence, correct)
    bins: list[tuple[int, float, int]]


def calibration_stats(
    arch: Architecture,
    arrays: Sequence[np.ndarray],
    site: SiteData,
    temperatures: Sequence[float],
    chosen: float | None = None,
) -> CalibrationStats:
    """NLL sums over a temperature grid, and ECE bins at ``chosen`` (if given)."""
    model = from_arrays(arch, arrays)
    logits = predict_logits(model, site.calib_images).double().numpy()
    return stats_from_logits(logits, site.calib_labels.numpy(), temperatures, chosen)


def stats_from_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    temperatures: Sequence[float],
    chosen: float | None = None,
) -> CalibrationStats:
    """The sums a hospital sends for its calibration split's ``logits`` and ``labels``."""
    nll_sums = [_nll_sum(logits, labels, t) for t in temperatures]
    bins: list[tuple[int, float, int]] = []
    if chosen is not None and len(labels):
        for b in reliability_bins(softmax(logits, chosen), labels, ECE_BINS):
            conf_sum = b.confidence * b.count if b.count else 0.0
            correct = round(b.accuracy * b.count) if b.count else 0
            bins.append((b.count, conf_sum, correct))
    return CalibrationStats(len(labels), nll_sums, bins)


def _nll_sum(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    if not len(labels):
        return 0.0
    scaled = logits / temperature
    shift = scaled.max(axis=1, keepdims=True)
    log_norm = shift[:, 0] + np.log(np.exp(scaled - shift).sum(axis=1))
    return float(np.sum(log_norm - scaled[np.arange(len(labels)), labels]))


def temperature_grid(points: int = 41, low: float = 0.25, high: float = 8.0) -> list[float]:
    """Log-spaced temperatures: the candidates each hospital scores."""
    return [float(t) for t in np.geomspace(low, high, points)]


def pooled_temperature(
    temperatures: Sequence[float], stats: Sequence[CalibrationStats]
) -> tuple[float, float]:
    """The grid temperature with the lowest pooled NLL, and that mean NLL."""
    total = sum(s.count for s in stats)
    if total == 0:
        return 1.0, math.nan
    sums = np.sum([s.nll_sums for s in stats], axis=0)
    best = int(np.argmin(sums))
    return float(temperatures[best]), float(sums[best] / total)


def pooled_ece(stats: Sequence[CalibrationStats]) -> float:
    """ECE over the union of the hospitals' calibration splits, from their bin sums."""
    total = sum(s.count for s in stats)
    if total == 0:
        return math.nan
    ece = 0.0
    for b in range(ECE_BINS):
        count = sum(s.bins[b][0] for s in stats if s.bins)
        if count:
            conf = sum(s.bins[b][1] for s in stats if s.bins)
            correct = sum(s.bins[b][2] for s in stats if s.bins)
            ece += abs(correct - conf) / total
    return ece
