"""The federation's logic without Flower: checks, aggregation, hospital data, calibration, keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from models.nets import Architecture
from training.calibration import expected_calibration_error, fit_temperature, softmax
from training.data import DatasetError
from training.federated.__main__ import main as federated_main
from training.federated.aggregate import Update, check_update, fedavg, fedmedian
from training.federated.hospital import (
    CalibrationStats,
    calibration_stats,
    load_site,
    local_train,
    pooled_ece,
    pooled_temperature,
    stats_from_logits,
    temperature_grid,
    to_arrays,
)
from training.federated.pki import make_hospital_key, pseudonym_for
from training.federated.protocol import RunConfig
from training.federated.sites import generate_site, site_profile
from training.loop import LoopConfig

ARCH = Architecture("lenet", 32, "quad")


def _update(name: str, values: list[float], examples: int) -> Update:
    return Update(
        name, [np.array(values, dtype=np.float32), np.array([3], dtype=np.int64)], examples
    )


def test_fedavg_is_the_example_weighted_mean() -> None:
    out = fedavg([_update("a", [1.0, 2.0], 1), _update("b", [4.0, 8.0], 2)])
    np.testing.assert_allclose(out[0], [3.0, 6.0])
    assert out[0].dtype == np.float32 and out[1].dtype == np.int64


def test_server_momentum_carries_the_last_step_on_weights_only() -> None:
    from training.federated.aggregate import momentum_step

    change = [np.array([1.0], np.float32), np.array([2.0], np.float32), np.array([3], np.int64)]
    first = momentum_step(change, None, 0.9, [True, False, False])
    assert [float(a[0]) for a in first] == [1.0, 2.0, 3.0]  # round 1: the plain aggregate
    second = momentum_step(change, first, 0.9, [True, False, False])
    assert float(second[0][0]) == pytest.approx(1.9)  # weight: 0.9 * 1 + 1
    assert float(second[1][0]) == 2.0 and int(second[2][0]) == 3  # statistics: plain
    assert second[0].dtype == np.float32 and second[2].dtype == np.int64
    assert momentum_step(change, first, 0.0, [True, True, True])[0][0] == 1.0


def test_server_momentum_must_be_below_one() -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="server_momentum"):
            RunConfig(server_momentum=bad)
    assert RunConfig(server_momentum=0.7).server_momentum == 0.7


def test_fedmedian_ignores_claimed_sizes_and_one_outlier() -> None:
    updates = [
        _update("a", [1.0], 1),
        _update("b", [2.0], 1),
        _update("c", [1000.0], 10_000),
    ]
    assert fedmedian(updates)[0][0] == pytest.approx(2.0)
    assert fedavg(updates)[0][0] > 900


@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
            st.integers(1, 1000),
        ),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=60, deadline=None)
def test_both_aggregates_stay_within_the_updates(rows: list[tuple[list[float], int]]) -> None:
    updates = [_update(f"h{i}", values, n) for i, (values, n) in enumerate(rows)]
    stacked = np.array([u.arrays[0] for u in updates])
    for out in (fedavg(updates), fedmedian(updates)):
        assert np.all(out[0] >= stacked.min(axis=0) - 1e-3)
        assert np.all(out[0] <= stacked.max(axis=0) + 1e-3)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (Update("x", [np.array([np.nan, 1.0], np.float32)], 5), "NaN"),
        (Update("x", [np.array([np.inf, 1.0], np.float32)], 5), "NaN or infinite"),
        (Update("x", [np.zeros(3, np.float32)], 5), "shape"),
        (Update("x", [np.zeros(2, np.float32), np.zeros(2, np.float32)], 5), "2 arrays"),
        (Update("x", [np.zeros(2, np.float32)], 0), "examples"),
    ],
)
def test_check_update_names_what_is_wrong(update: Update, reason: str) -> None:
    message = check_update([np.zeros(2, np.float32)], update)
    assert message is not None and reason in message


def test_a_good_update_passes_the_check() -> None:
    assert check_update([np.zeros(2, np.float32)], Update("x", [np.ones(2, np.float32)], 3)) is None


def test_secagg_only_with_fedavg() -> None:
    with pytest.raises(ValueError, match="only FedAvg"):
        RunConfig(strategy="fedmedian", secagg=True)


def test_the_cli_refuses_secagg_with_fedmedian(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        federated_main(["run", "--secagg", "--strategy", "fedmedian"])
    assert exit_info.value.code == 2
    assert "only FedAvg" in capsys.readouterr().err


def test_run_config_survives_flowers_toml_types() -> None:
    run = RunConfig(rounds=3, lr=0.01, secagg=True, min_hospitals=2)
    values = run.to_flower()
    values["lr"] = 1  # TOML writes 1.0 back as an int when it can
    assert RunConfig.from_flower(values) == RunConfig(
        rounds=3, lr=1.0, secagg=True, min_hospitals=2
    )


def test_the_flower_app_declares_every_run_setting_with_its_default() -> None:
    # Flower answers "Invalid run configuration" for a key the app bundle does not declare.
    import tomllib

    app = Path(__file__).parents[2] / "training" / "federated" / "app" / "pyproject.toml"
    declared = tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_flower(declared) == RunConfig()
    assert set(declared) == set(RunConfig().to_flower())


def test_the_round_learning_rate_follows_a_cosine_over_the_run() -> None:
    run = RunConfig(rounds=4, lr=0.01)
    lrs = [run.round_lr(r) for r in range(1, 5)]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] > 0
    assert lrs[2] == pytest.approx(0.005)  # half-way through the run, half the rate
    assert RunConfig(rounds=4, lr=0.01, lr_schedule="constant").round_lr(4) == 0.01


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"augmentation": "heavy"}, "augmentation"),
        ({"keep_epoch": "median"}, "keep_epoch"),
    ],
)
def test_unknown_schedules_and_augmentations_are_refused(
    change: dict[str, str], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        RunConfig(**change)  # type: ignore[arg-type]


# ------------------------------------------------------------------ a hospital's data


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_site(tmp_path_factory.mktemp("site") / "h1", site_profile(1), count=24, seed=11)


def test_a_generated_site_has_its_prevalence(site_folder: Path) -> None:
    yes, no = len(list((site_folder / "yes").iterdir())), len(list((site_folder / "no").iterdir()))
    assert yes + no == 24
    assert yes == round(24 * site_profile(1).prevalence)


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40), value, np.uint8), mode="L").save(path)


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "yes").mkdir()
    (tmp_path / "no").mkdir()
    with pytest.raises(DatasetError, match="no .jpg"):
        load_site(tmp_path, ARCH, calibration_fraction=0.2, seed=0)


def test_one_class_only_is_refused(tmp_path: Path) -> None:
    _image(tmp_path / "yes" / "Y1.png", 10)
    (tmp_path / "no").mkdir()
    with pytest.raises(DatasetError, match="only one class"):
        load_site(tmp_path, ARCH, calibration_fraction=0.2, seed=0)


def test_an_unreadable_image_is_refused(tmp_path: Path) -> None:
    _image(tmp_path / "yes" / "Y1.png", 10)
    _image(tmp_path / "no" / "N1.png", 20)
    (tmp_path / "no" / "N2.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match="unreadable"):
        load_site(tmp_path, ARCH, calibration_fraction=0.2, seed=0)


def test_a_free_rider_returns_the_global_model(site_folder: Path) -> None:
    site = load_site(site_folder, ARCH, calibration_fraction=0.25, seed=0)
    from models.nets import build_model

    global_arrays = to_arrays(build_model(ARCH))
    result = local_train(
        ARCH, global_arrays, site, LoopConfig(max_epochs=1, progress=False), "free-ride"
    )
    for got, want in zip(result.arrays, global_arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    honest = local_train(ARCH, global_arrays, site, LoopConfig(max_epochs=1, progress=False))
    assert any(not np.array_equal(g, w) for g, w in zip(honest.arrays, global_arrays, strict=True))
    assert honest.examples == len(site.train_labels)


def test_keep_last_returns_the_last_epoch_whatever_the_calibration_split(
    site_folder: Path,
) -> None:
    """``keep_epoch = last``: no early stopping, so the calibration split chooses nothing."""
    import dataclasses

    from models.nets import build_model

    site = load_site(site_folder, ARCH, calibration_fraction=0.25, seed=0)
    # calibration labels flipped: the better the model fits, the worse its calibration loss,
    # so early stopping would pick an early epoch
    flipped = dataclasses.replace(site, calib_labels=1 - site.calib_labels)
    no_calibration = dataclasses.replace(
        site, calib_images=site.calib_images[:0], calib_labels=site.calib_labels[:0]
    )
    global_arrays = to_arrays(build_model(ARCH))

    def arrays(config: LoopConfig, data: object) -> list[np.ndarray]:
        return local_train(ARCH, global_arrays, data, config).arrays  # type: ignore[arg-type]

    last = LoopConfig(max_epochs=4, progress=False, augment=False, keep="last")
    for a, b in zip(arrays(last, flipped), arrays(last, no_calibration), strict=True):
        np.testing.assert_array_equal(a, b)
    best = dataclasses.replace(last, keep="best")
    early = arrays(best, flipped)
    assert any(not np.array_equal(a, b) for a, b in zip(early, arrays(last, flipped), strict=True))
    with pytest.raises(ValueError, match="keep"):
        LoopConfig(keep="median")


def test_the_owner_applies_server_momentum_and_archives_the_step(
    site_folder: Path, tmp_path: Path
) -> None:
    from training.federated.hospital import weight_mask
    from training.federated.owner import Federation

    run = RunConfig(
        image_size=32, server_momentum=0.5, eval_dir=str(site_folder),
        out=str(tmp_path / "fed.pth"),
    )  # fmt: skip
    federation = Federation(run, {})
    start = [np.array(a) for a in federation.arrays]
    change = [np.ones_like(a) if a.dtype.kind == "f" else np.zeros_like(a) for a in start]
    federation.apply(change)
    second = federation.apply(change)
    for before, after, step, weight in zip(
        start, federation.arrays, second, weight_mask(run.architecture()), strict=True
    ):
        if before.dtype.kind != "f":
            continue
        np.testing.assert_allclose(step, 1.5 if weight else 1.0)  # 0.5 * 1 + 1 on weights
        np.testing.assert_allclose(after - before, 2.5 if weight else 2.0, rtol=1e-5)


def test_the_owner_pre_trains_the_first_model_on_its_public_images(
    site_folder: Path, tmp_path: Path
) -> None:
    from training.federated.outputs import FederatedPaths, load_arrays
    from training.federated.owner import Federation

    def owner(name: str, **change: object) -> Federation:
        run = RunConfig(
            image_size=32, eval_dir=str(site_folder), dp_public_dir=str(site_folder),
            out=str(tmp_path / name / "fed.pth"), **change,  # type: ignore[arg-type]
        )  # fmt: skip
        return Federation(run, {})

    plain, pre, again = (
        owner("plain"),
        owner("pre", dp_public_pretrain_epochs=1),
        owner("again", dp_public_pretrain_epochs=1),
    )
    assert plain.initialisation == "random weights (seed 0)"
    assert "pre-trained without DP for 1 epochs on 24 public images" in pre.initialisation
    floats = [i for i, a in enumerate(plain.arrays) if a.dtype.kind == "f"]
    assert all(not np.array_equal(plain.arrays[i], pre.arrays[i]) for i in floats)
    for a, b in zip(pre.arrays, again.arrays, strict=True):  # same seed, same start
        np.testing.assert_array_equal(a, b)
    archived, _ = load_arrays(  # what every hospital and the contribution replay start from
        FederatedPaths.for_checkpoint(tmp_path / "pre" / "fed.pth").updates
        / "round-000"
        / "global.npz"
    )
    for a, b in zip(archived, pre.arrays, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"dp_public_pretrain_epochs": 1}, "needs --dp-public-dir"),
        ({"dp_public_pretrain_epochs": -1, "dp_public_dir": "public"}, ">= 0"),
    ],
)
def test_public_pre_training_needs_public_images(change: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RunConfig(**change)  # type: ignore[arg-type]


def test_pooled_calibration_matches_central_calibration_on_the_union() -> None:
    rng = np.random.default_rng(0)
    stats: list[CalibrationStats] = []
    all_logits, all_labels = [], []
    grid = temperature_grid()
    for _ in range(3):
        labels = rng.integers(0, 2, 80)
        logits = np.stack([np.zeros(80), (labels * 2 - 1) * 3.0 + rng.normal(0, 2, 80)], axis=1)
        all_logits.append(logits)
        all_labels.append(labels)
        stats.append(stats_from_logits(logits, labels, grid, chosen=2.0))
    union_logits, union_labels = np.concatenate(all_logits), np.concatenate(all_labels)
    chosen, _ = pooled_temperature(grid, stats)
    central = fit_temperature(union_logits, union_labels)
    step = grid[1] / grid[0]
    assert central / step <= chosen <= central * step
    assert pooled_ece(stats) == pytest.approx(
        expected_calibration_error(softmax(union_logits, 2.0), union_labels)
    )


def test_calibration_stats_from_a_real_model(site_folder: Path) -> None:
    from models.nets import build_model

    site = load_site(site_folder, ARCH, calibration_fraction=0.25, seed=0)
    grid = temperature_grid(5)
    stats = calibration_stats(ARCH, to_arrays(build_model(ARCH)), site, grid, chosen=1.0)
    assert stats.count == len(site.calib_labels) > 0
    assert len(stats.nll_sums) == 5 and all(s > 0 for s in stats.nll_sums)
    assert sum(b[0] for b in stats.bins) == stats.count


def test_hospital_keys_are_openssh_p384_and_private(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = make_hospital_key(tmp_path / "node.key")
    key = serialization.load_ssh_private_key((tmp_path / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert (tmp_path / "node.key").stat().st_mode & 0o777 == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert pseudonym_for(public) == pseudonym_for(public) and pseudonym_for(public).startswith("h-")
