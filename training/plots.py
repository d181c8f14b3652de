"""PNG figures saved next to the checkpoint: learning curves and a reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.calibration import expected_calibration_error, reliability_bins, softmax  # noqa: E402
from training.loop import EpochRecord  # noqa: E402


def plot_curves(epochs: Sequence[EpochRecord], best_epoch: int, path: Path, title: str) -> Path:
    """Loss and accuracy per epoch for the train, calibration and eval splits."""
    x = [e.epoch for e in epochs]
    series = (
        ("train", "-o", [e.train_loss for e in epochs], [e.train_accuracy for e in epochs]),
        (
            "calibration",
            "-s",
            [e.calibration_loss for e in epochs],
            [e.calibration_accuracy for e in epochs],
        ),
        ("eval", "--^", [e.eval_loss for e in epochs], [e.eval_accuracy for e in epochs]),
    )
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style, losses, accuracies in series:
        ax_loss.plot(x, losses, style, label=split)
        ax_acc.plot(x, accuracies, style, label=split)
    for ax, name in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy")):
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(
    logits: np.ndarray, labels: np.ndarray, temperature: float, path: Path, title: str
) -> Path:
    """Accuracy vs confidence per bin, before and after temperature scaling (eval split)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    width = 0.1
    for offset, (name, t) in (
        (-0.025, ("raw", 1.0)),
        (0.025, (f"T = {temperature:.2f}", temperature)),
    ):
        probs = softmax(logits, t)
        bins = reliability_bins(probs, labels)
        centres = [(b.lower + b.upper) / 2 + offset for b in bins if b.count]
        accs = [b.accuracy for b in bins if b.count]
        ece = expected_calibration_error(probs, labels)
        ax.bar(centres, accs, width=width / 2, alpha=0.7, label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0.45, 1.0)  # binary task: confidence (max probability) is at least 0.5
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy in bin")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
