"""The generator: Kaggle layout, determinism by seed, and labels that match the pixels."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from training.synthetic import GENERATOR_VERSION, generate_dataset, preset
from training.synthetic.anatomy import axial_slice, brain_mask
from training.synthetic.difficulty import Difficulty
from training.synthetic.lesions import draw_lesion, paint_lesion
from training.synthetic.render import render_slice

REPO = Path(__file__).resolve().parents[2]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("mri"), seed=3, train=6, eval=4)


def test_layout_counts_and_manifest(tiny_dataset: Path) -> None:
    for split, count in (("train", 6), ("eval", 4)):
        yes = list((tiny_dataset / split / "yes").iterdir())
        no = list((tiny_dataset / split / "no").iterdir())
        assert len(yes) == len(no) == count // 2
        for path in yes + no:
            assert path.suffix.lower() in {".jpg", ".jpeg", ".png"}
            with Image.open(path) as image:
                assert image.mode in {"L", "RGB"}
                assert 170 <= min(image.size) and max(image.size) <= 400
    manifest = json.loads((tiny_dataset / "dataset.json").read_text())
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["seed"] == 3
    assert manifest["splits"]["train"]["count"] == 6
    assert manifest["splits"]["train"]["seed"] != manifest["splits"]["eval"]["seed"]


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_dataset: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", seed=3, train=6, eval=4)
    other = generate_dataset(tmp_path / "other", seed=4, train=6, eval=4)
    assert _digests(again) == _digests(tiny_dataset)
    images = {k: v for k, v in _digests(other).items() if not k.endswith(".json")}
    assert not set(images.values()) & set(_digests(tiny_dataset).values())


def test_train_and_eval_streams_differ(tiny_dataset: Path) -> None:
    train = {hashlib.sha256(p.read_bytes()).digest() for p in (tiny_dataset / "train").rglob("*.*")}
    evals = {hashlib.sha256(p.read_bytes()).digest() for p in (tiny_dataset / "eval").rglob("*.*")}
    assert not train & evals


def test_lesion_is_painted_inside_the_brain_around_its_centre() -> None:
    canvas = axial_slice(90)
    mask = brain_mask(canvas)
    rng = np.random.default_rng(7)
    lesion = draw_lesion(mask, preset("easy"), rng)
    assert mask[int(round(lesion.row)), int(round(lesion.col))]
    painted = paint_lesion(canvas, mask, lesion, rng)
    changed = np.abs(painted - canvas) > 0.02
    assert changed.sum() > np.pi * (0.5 * lesion.radius) ** 2
    rows, cols = np.nonzero(changed)
    distance = np.hypot(rows - lesion.row, cols - lesion.col)
    assert distance.max() < 4.0 * lesion.radius  # mass effect + halo stay local
    # Without mass effect, the lesion itself never spills out of the brain.
    flat = paint_lesion(canvas, mask, replace(lesion, mass_effect=0.0), np.random.default_rng(7))
    spilled = np.abs(flat - canvas) > 0.02
    assert spilled.any() and not spilled[~ndimage.binary_dilation(mask, iterations=3)].any()


def test_healthy_slice_has_no_lesion() -> None:
    assert render_slice(False, Difficulty(), np.random.default_rng(7)).lesion is None
    assert render_slice(True, Difficulty(), np.random.default_rng(7)).lesion is not None


def test_difficulty_presets_are_ordered() -> None:
    easy, standard, hard = preset("easy"), preset("standard"), preset("hard")
    assert easy.lesion_contrast[0] > standard.lesion_contrast[0] > hard.lesion_contrast[0]
    assert easy.lesion_radius_mm[0] > hard.lesion_radius_mm[0]
    assert standard == Difficulty()
    with pytest.raises(ValueError, match="unknown difficulty"):
        preset("impossible")


def test_script_writes_layout(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "scripts/generate_data.py", "--out", str(out), "--train", "2",
         "--eval", "2", "--seed", "1", "--quiet"],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "eval", "train"]
    assert len(list((out / "train" / "yes").iterdir())) == 1
