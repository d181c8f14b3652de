"""The paired-bootstrap AUC comparison (pure numpy)."""

import numpy as np
import pytest

from training.compare import paired_bootstrap_auc


def _task(n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels + rng.normal(0, 1.0, n), labels


def test_a_model_against_itself_differs_by_exactly_zero():
    scores, labels = _task()
    result = paired_bootstrap_auc(scores, scores, labels, resamples=200)
    assert result.auc_a == result.auc_b
    assert result.difference == result.ci_low == result.ci_high == 0.0


def test_a_clearly_better_model_has_an_interval_above_zero():
    scores, labels = _task()
    sharper = scores + labels * 1.5  # separates the classes further
    result = paired_bootstrap_auc(scores, sharper, labels, resamples=300)
    assert result.auc_b > result.auc_a
    assert 0.0 < result.ci_low <= result.difference <= result.ci_high


def test_pairing_makes_the_interval_narrower_than_the_models_own_spread():
    scores, labels = _task(seed=2)
    noise = np.random.default_rng(3).normal(0, 0.05, len(scores))
    result = paired_bootstrap_auc(scores, scores + noise, labels, resamples=300)
    assert result.ci_high - result.ci_low < 0.02  # one AUC alone varies by ~0.05 here


def test_refuses_mismatched_or_one_class_inputs():
    scores, labels = _task()
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_auc(scores, scores[:-1], labels)
    with pytest.raises(ValueError, match="both classes"):
        paired_bootstrap_auc(scores, scores, np.ones_like(labels))
