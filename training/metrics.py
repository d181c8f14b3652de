"""Classification metrics for the binary tumour task (pure numpy, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.calibration import expected_calibration_error, nll, softmax


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties 1/2."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    unique, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    del unique
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """``[[TN, FP], [FN, TP]]``: rows are the true class, columns the predicted class."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return [[int(((labels == t) & (predictions == p)).sum()) for p in (0, 1)] for t in (0, 1)]


#: How ``confusion_matrix`` is laid out, recorded beside it in the metrics file.
CONFUSION_MATRIX_LAYOUT = "rows = true [no_tumor, tumor], columns = predicted"


@dataclass(frozen=True)
class ClassificationReport:
    """How a model did on one split; ``nan`` where a figure is undefined (e.g. one class only)."""

    count: int
    accuracy: float
    auc: float
    sensitivity: float
    specificity: float
    confusion_matrix: list[list[int]]  # [[TN, FP], [FN, TP]]
    nll_before: float  # before temperature scaling
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict[str, Any]:
        """The metrics file's record (with the confusion matrix's layout spelled out)."""
        record: dict[str, Any] = {}
        for key, value in asdict(self).items():
            record[key] = value
            if key == "confusion_matrix":
                record["confusion_matrix_layout"] = CONFUSION_MATRIX_LAYOUT
        return record


def classification_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float
) -> ClassificationReport:
    """Accuracy, AUC, confusion matrix, and NLL/ECE before and after temperature scaling."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    predictions = logits.argmax(axis=1)
    matrix = confusion_matrix(predictions, labels)
    (tn, fp), (fn, tp) = matrix
    return ClassificationReport(
        count=int(len(labels)),
        accuracy=float((predictions == labels).mean()) if len(labels) else float("nan"),
        auc=roc_auc(raw[:, 1], labels),
        sensitivity=tp / (tp + fn) if tp + fn else float("nan"),
        specificity=tn / (tn + fp) if tn + fp else float("nan"),
        confusion_matrix=matrix,
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, temperature),
        ece_before=expected_calibration_error(raw, labels),
        ece_after=expected_calibration_error(calibrated, labels),
    )
