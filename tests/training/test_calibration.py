"""Temperature scaling and ECE: pure functions, checked on constructed data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
)
from training.metrics import classification_report, confusion_matrix, roc_auc


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true calibration temperature is 3: scaled up 3x from calibrated ones."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 2.0, n)
    p_positive = 1.0 / (1.0 + np.exp(-margin))
    labels = (rng.random(n) < p_positive).astype(np.int64)
    logits = np.stack([np.zeros(n), 3.0 * margin], axis=1)
    return logits, labels


def test_temperature_recovers_overconfidence_and_improves_nll_and_ece() -> None:
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert 2.6 < t < 3.4
    assert nll(logits, labels, t) < nll(logits, labels) - 0.05
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert before > 0.08 and after < 0.03


def test_temperature_of_calibrated_logits_is_about_one() -> None:
    logits, labels = _overconfident()
    assert fit_temperature(logits / 3.0, labels) == pytest.approx(1.0, abs=0.15)


def test_temperature_keeps_the_argmax() -> None:
    logits, _ = _overconfident(200)
    assert (softmax(logits, 0.3).argmax(1) == softmax(logits, 7.0).argmax(1)).all()


def test_ece_by_hand() -> None:
    # two predictions at confidence 0.9 (one right), two at 0.6 (both right)
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([1, 0, 0, 1])
    # bins: 0.9 -> |0.5 - 0.9| = 0.4 (weight 1/2); 0.6 -> |1 - 0.6| = 0.4 (weight 1/2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels)
    assert len(bins) == 10 and sum(b.count for b in bins) == 4
    assert bins[8].count == 2 and bins[8].accuracy == 0.5  # (0.8, 0.9]
    assert bins[5].count == 2 and bins[5].accuracy == 1.0  # (0.5, 0.6]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=40), st.floats(0.1, 10))
def test_softmax_rows_are_distributions(values: list[float], temperature: float) -> None:
    logits = np.array(values[: len(values) // 2 * 2]).reshape(-1, 2)
    probs = softmax(logits, temperature)
    assert np.allclose(probs.sum(1), 1.0) and (probs >= 0).all()
    labels = np.zeros(len(logits), dtype=np.int64)
    assert 0.0 <= expected_calibration_error(probs, labels) <= 1.0


def test_auc_and_confusion_by_hand() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(scores, np.ones(4)))
    assert confusion_matrix(np.array([0, 1, 0, 1]), labels) == [[1, 1], [1, 1]]


def test_auc_matches_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_report_fields() -> None:
    logits, labels = _overconfident(500)
    report = classification_report(logits, labels, temperature=3.0)
    assert report.count == 500
    assert report.ece_after < report.ece_before
    (tn, fp), (fn, tp) = report.confusion_matrix
    assert tn + fp + fn + tp == 500
    assert report.accuracy == pytest.approx((tn + tp) / 500)
    assert report.sensitivity == pytest.approx(tp / (tp + fn))
    record = report.to_dict()  # the metrics file's layout
    assert list(record) == [
        "count", "accuracy", "auc", "sensitivity", "specificity", "confusion_matrix",
        "confusion_matrix_layout", "nll_before", "nll_after", "ece_before", "ece_after",
    ]  # fmt: skip
    assert record["confusion_matrix_layout"].startswith("rows = true")
