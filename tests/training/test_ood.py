"""Shift sets, robust augmentation and the screening operating point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.preprocessing import Preprocessing
from training.data import augment_robust
from training.ood import load_shift_set
from training.screening import (
    bootstrap,
    choose_threshold,
    label_ece,
    rates,
    sensitivity_at_specificity,
)
from training.settings import TrainSettings
from training.synthetic.shifts import NO_LABEL, VARIANTS, generate_shift_set, render_shift


def test_shift_images_are_deterministic_and_dev_differs_from_heldout() -> None:
    a = render_shift("near", 3, 0, "dev")
    assert np.array_equal(a.pixels, render_shift("near", 3, 0, "dev").pixels)
    assert not np.array_equal(a.pixels, render_shift("near", 3, 0, "heldout").pixels)
    assert render_shift("far", 0, 0, "dev").label == NO_LABEL
    assert {render_shift("orientation", i, 0, "dev").label for i in range(4)} == {0, 1}


def test_a_generated_shift_set_loads_with_its_variants(tmp_path) -> None:
    folder = generate_shift_set(tmp_path, "far", split="dev", count=8)
    loaded = load_shift_set(folder, Preprocessing(64))
    assert loaded.images.shape == (8, 1, 64, 64)
    assert set(loaded.variants) == set(VARIANTS["far"]) and not loaded.labelled.any()


def test_robust_augmentation_keeps_images_standardised_and_varies_them() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(6, 1, 64, 64)
    out = augment_robust(batch, generator)
    assert out.shape == batch.shape and torch.isfinite(out).all()
    assert out.mean(dim=(1, 2, 3)).abs().max() < 1e-4
    assert (out.std(dim=(1, 2, 3), correction=0) - 1).abs().max() < 1e-3
    assert not torch.allclose(out, augment_robust(batch, generator))


def test_operating_point_reaches_the_target_on_the_split_it_was_chosen_on() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    p = np.clip(0.3 + 0.3 * labels + rng.normal(0, 0.15, 400), 0, 1)
    threshold = choose_threshold(p, labels, 0.9)
    assert threshold <= 0.5
    sensitivity, _ = rates(p, labels, threshold)
    assert sensitivity >= 0.9
    assert rates(p, labels, threshold + 1e-6)[0] < 0.9 or threshold == 0.5
    assert 0 <= sensitivity_at_specificity(p, labels, 0.95) <= 1


def test_calibrated_probabilities_stay_calibrated_at_any_threshold() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, 20000) < p).astype(int)  # P(tumor) is exactly p
    for threshold in (0.2, 0.35, 0.5):
        assert label_ece(p, labels, threshold) < 0.02


def test_bootstrap_interval_contains_the_point_figure() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    p = np.clip(0.2 + 0.5 * labels + rng.normal(0, 0.2, 300), 0, 1)
    intervals = bootstrap(p, labels, 0.4, resamples=100)
    for interval in intervals.values():
        assert interval.low <= interval.value <= interval.high


@pytest.mark.parametrize(
    "bad",
    [
        {"unfamiliarity": "astrology"},
        {"unfamiliar_flag_rate": 0.0},
        {"screening_sensitivity": 1.0},
        {"augmentation": "heavy"},
    ],
)
def test_bad_settings_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        TrainSettings(source_dir_train="a", source_dir_eval="b", **bad)
