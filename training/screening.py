"""The screening operating point and figures with bootstrap confidence intervals (pure numpy).

A second-opinion service must not miss tumours, so the decision threshold on the calibrated
P(tumor) is chosen on the calibration split (never on eval) for a stated target, by default
sensitivity >= 0.90: the highest threshold that still reaches the target there. The
probabilities themselves are unchanged (temperature-scaled), so the confidence a label
carries stays calibrated; only where the line between the labels is drawn moves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.calibration import expected_calibration_error
from training.metrics import roc_auc

FIXED_SPECIFICITIES = (0.90, 0.95, 0.98)
FIXED_SENSITIVITIES = (0.85, 0.90, 0.95)


def choose_threshold(p_tumor: np.ndarray, labels: np.ndarray, sensitivity: float) -> float:
    """The highest threshold ``t`` on P(tumor) with sensitivity(``p >= t``) >= ``sensitivity``.

    Clamped to [0.01, 0.5]: the operating point only ever lowers the bar for "tumor".
    """
    return float(min(0.5, max(0.01, choose_threshold_exact(p_tumor, labels, sensitivity))))


def rates(p_tumor: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``p >= threshold``."""
    p_tumor, labels = np.asarray(p_tumor), np.asarray(labels)
    positive = p_tumor >= threshold
    pos, neg = labels == 1, labels == 0
    sens = float(positive[pos].mean()) if pos.any() else float("nan")
    spec = float((~positive[neg]).mean()) if neg.any() else float("nan")
    return sens, spec


def sensitivity_at_specificity(p_tumor: np.ndarray, labels: np.ndarray, spec: float) -> float:
    negatives = np.sort(np.asarray(p_tumor)[np.asarray(labels) == 0])
    if len(negatives) == 0:
        return float("nan")
    # the lowest threshold whose specificity is >= spec: just above the k-th negative score
    k = int(np.ceil(spec * len(negatives))) - 1
    threshold = np.nextafter(negatives[max(k, 0)], np.inf)
    return rates(p_tumor, labels, float(threshold))[0]


def specificity_at_sensitivity(p_tumor: np.ndarray, labels: np.ndarray, sens: float) -> float:
    return rates(p_tumor, labels, choose_threshold_exact(p_tumor, labels, sens))[1]


def choose_threshold_exact(p_tumor: np.ndarray, labels: np.ndarray, sensitivity: float) -> float:
    """The highest threshold keeping at least ``ceil(sensitivity * n)`` positives at or above it."""
    positives = np.sort(np.asarray(p_tumor, dtype=np.float64)[np.asarray(labels) == 1])
    if len(positives) == 0:
        return 0.5
    missed = len(positives) - int(np.ceil(sensitivity * len(positives)))
    return float(positives[max(missed, 0)])


def label_ece(p_tumor: np.ndarray, labels: np.ndarray, threshold: float, bins: int = 10) -> float:
    """ECE of the probability each *revealed* label carries (P(tumor) for "tumor", else
    1 - P(tumor)) against whether that label is right, over 10 bins of [0, 1]: the
    calibration patients and pricing see at the operating point."""
    predicted = p_tumor >= threshold
    confidence = np.where(predicted, p_tumor, 1.0 - p_tumor)
    correct = predicted == (labels == 1)
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def _two_class(p_tumor: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - p_tumor, p_tumor], axis=1)


def screening_figures(
    p_tumor: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    """Point figures at ``threshold`` plus sensitivity/specificity at fixed partners."""
    p_tumor, labels = np.asarray(p_tumor, dtype=np.float64), np.asarray(labels)
    sens, spec = rates(p_tumor, labels, threshold)
    predicted = (p_tumor >= threshold).astype(int)
    figures = {
        "auc": roc_auc(p_tumor, labels),
        "accuracy": float((predicted == labels).mean()),
        "sensitivity": sens,
        "specificity": spec,
        "ece": expected_calibration_error(_two_class(p_tumor), labels),
        "ece_of_revealed_label": label_ece(p_tumor, labels, threshold),
    }
    for s in FIXED_SPECIFICITIES:
        figures[f"sensitivity_at_specificity_{s:.2f}"] = sensitivity_at_specificity(
            p_tumor, labels, s
        )
    for s in FIXED_SENSITIVITIES:
        figures[f"specificity_at_sensitivity_{s:.2f}"] = specificity_at_sensitivity(
            p_tumor, labels, s
        )
    return figures


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap(
    p_tumor: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of :func:`screening_figures` (stratified by class)."""
    p_tumor, labels = np.asarray(p_tumor, dtype=np.float64), np.asarray(labels)
    point = screening_figures(p_tumor, labels, threshold)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in (0, 1)]
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups if len(g)])
        for key, value in screening_figures(p_tumor[idx], labels[idx], threshold).items():
            draws[key].append(value)
    alpha = (1.0 - level) / 2
    return {
        key: Interval(
            point[key],
            float(np.nanquantile(draws[key], alpha)),
            float(np.nanquantile(draws[key], 1 - alpha)),
        )
        for key in point
    }


def intervals_to_dict(intervals: dict[str, Interval]) -> dict[str, Any]:
    return {key: interval.to_dict() for key, interval in intervals.items()}
