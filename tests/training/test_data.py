"""The folder loader accepts any Kaggle-layout folder: case, formats, modes and sizes vary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.preprocessing import Preprocessing
from training.data import DatasetError, ImageFolder, augment, list_samples, stratified_split


def _save(path: Path, mode: str, size: tuple[int, int], value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    gray = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    image = Image.fromarray(gray, mode="L")
    if mode == "RGB":
        image = image.convert("RGB")
    elif mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 200)
    image.save(path)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "kaggle"
    _save(root / "YES" / "Y1.jpg", "RGB", (630, 630), 1)
    _save(root / "YES" / "Y2.JPEG", "L", (225, 300), 2)
    _save(root / "YES" / "y3.png", "RGB", (512, 480), 3)
    _save(root / "no" / "1 no.jpeg", "L", (201, 251), 4)
    _save(root / "no" / "N2.PNG", "I;16", (300, 240), 5)
    (root / "no" / "notes.txt").write_text("not an image")
    (root / "no" / "Thumbs.db").write_bytes(b"\0\1")
    _save(root / "maybe" / "ignored.jpg", "L", (64, 64), 6)
    return root


def test_loader_reads_mixed_formats_case_insensitively(mixed_folder: Path) -> None:
    data = ImageFolder(mixed_folder, Preprocessing(64))
    assert len(data) == 5
    assert data.class_counts() == {"no": 2, "yes": 3}
    assert data.images.shape == (5, 1, 64, 64)
    assert data.images.dtype == torch.float32
    names = {s.path.name: s.label for s in data.samples}
    assert names == {"Y1.jpg": 1, "Y2.JPEG": 1, "y3.png": 1, "1 no.jpeg": 0, "N2.PNG": 0}
    image, label = data[0]
    assert image.shape == (1, 64, 64) and label in (0, 1)


def test_loader_uses_the_shared_preprocessing(mixed_folder: Path) -> None:
    prep = Preprocessing(32)
    data = ImageFolder(mixed_folder, prep)
    for i, sample in enumerate(data.samples):
        assert torch.equal(data.images[i], prep.tensor_from_path(sample.path))
        assert abs(float(data.images[i].mean())) < 1e-4  # standardised per image


def test_limit_keeps_both_classes(mixed_folder: Path) -> None:
    data = ImageFolder(mixed_folder, Preprocessing(32), limit=2)
    assert sorted(data.labels.tolist()) == [0, 1]


def test_missing_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    _save(tmp_path / "yes" / "a.jpg", "L", (50, 50))
    with pytest.raises(DatasetError, match=r"missing \['no'\]"):
        list_samples(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        list_samples(tmp_path / "absent")


def test_empty_class_folders_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "yes").mkdir()
    (tmp_path / "no").mkdir()
    with pytest.raises(DatasetError, match="no .jpg"):
        list_samples(tmp_path)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "no" / "ok.jpg", "L", (50, 50))
    (tmp_path / "yes").mkdir()
    (tmp_path / "yes" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        ImageFolder(tmp_path, Preprocessing(32))


def test_stratified_split_is_reproducible_and_disjoint() -> None:
    labels = torch.tensor([0] * 40 + [1] * 20)
    keep, held = stratified_split(labels, 0.25, seed=1)
    again_keep, again_held = stratified_split(labels, 0.25, seed=1)
    assert torch.equal(keep, again_keep) and torch.equal(held, again_held)
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert len(keep) + len(held) == 60
    assert (labels[held] == 0).sum() == 10 and (labels[held] == 1).sum() == 5
    _, none_held = stratified_split(labels, 0.0, seed=1)
    assert len(none_held) == 0


def test_augment_flips_and_shifts_without_changing_shape() -> None:
    batch = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    out = augment(batch, torch.Generator().manual_seed(0), max_shift=2)
    assert out.shape == batch.shape
    assert not torch.equal(out, batch)
    flipped_only = augment(batch, torch.Generator().manual_seed(0), max_shift=0)
    for original, result in zip(batch, flipped_only, strict=True):
        assert torch.equal(result, original) or torch.equal(result, original.flip(-1))
