"""Temperature scaling and expected calibration error (pure numpy, no I/O).

The bounty a patient pays later is driven by the model's confidence, so the confidence
must mean what it says. Temperature scaling (Guo et al., 2017) divides the logits by one
scalar ``T`` fitted by minimising the negative log-likelihood on held-out data; it never
changes the argmax, so accuracy and AUC are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shift = scaled.max(axis=1, keepdims=True)
    log_norm = shift[:, 0] + np.log(np.exp(scaled - shift).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in ``TEMPERATURE_BOUNDS`` minimising NLL (searched in log space)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    best = float(np.exp(result.x))
    return best if nll(logits, labels, best) <= nll(logits, labels, 1.0) else 1.0


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence of the predictions in the bin (nan if empty)
    accuracy: float  # fraction of them that are correct (nan if empty)


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 10
) -> list[ReliabilityBin]:
    """Predictions grouped by confidence (max probability) into ``n_bins`` equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins, with confidence 0 falling in the first
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        bins.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=count,
                confidence=float(confidence[members].mean()) if count else float("nan"),
                accuracy=float(correct[members].mean()) if count else float("nan"),
            )
        )
    return bins


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE: bin-size-weighted mean |accuracy - confidence| over ``n_bins`` confidence bins."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(
        sum(
            b.count / total * abs(b.accuracy - b.confidence)
            for b in reliability_bins(probs, labels, n_bins)
            if b.count
        )
    )
