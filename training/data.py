"""Labelled image folders in the Kaggle layout (``yes/`` = tumour, ``no/`` = healthy).

Works for the generated set and for the real Kaggle "Brain MRI Images for Brain Tumor
Detection" download alike: folder names are matched case-insensitively, files by suffix
(.jpg/.jpeg/.png, any case), and every image goes through the one shared
``models.preprocessing.Preprocessing``. Tensors are cached in memory (a few MB at 64 px).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset

from models.preprocessing import Preprocessing

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
#: folder name -> class index (index 1 is the positive "tumor" class, see CLASS_NAMES)
CLASS_FOLDERS = {"no": 0, "yes": 1}


class DatasetError(ValueError):
    """A data folder that is not in the ``yes/``/``no/`` layout, or an unreadable image."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def list_samples(root: Path) -> list[Sample]:
    """All images under ``root/yes`` and ``root/no`` (any case), sorted for determinism."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    samples: list[Sample] = []
    seen: set[str] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = CLASS_FOLDERS.get(folder.name.lower())
        if label is None:
            continue
        seen.add(folder.name.lower())
        samples.extend(
            Sample(path, label)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
    missing = set(CLASS_FOLDERS) - seen
    if missing:
        raise DatasetError(f"{root}: expected sub-folders yes/ and no/, missing {sorted(missing)}")
    if not samples:
        raise DatasetError(f"{root}: no .jpg/.jpeg/.png images in yes/ or no/")
    return samples


def fingerprint(root: Path, samples: list[Sample]) -> str:
    """sha256 over (relative path, label, file sha256) of every sample: the data's identity."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"{sample.path.relative_to(root).as_posix()}\0{sample.label}\0".encode())
        digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()


class ImageFolder(Dataset):
    """``(1 x S x S tensor, label)`` pairs for a ``yes/``/``no/`` folder, decoded once."""

    def __init__(self, root: Path, preprocessing: Preprocessing, limit: int | None = None) -> None:
        self.root = Path(root)
        self.samples = list_samples(self.root)
        if limit is not None:
            self.samples = _balanced_head(self.samples, limit)
        self.preprocessing = preprocessing
        tensors = []
        for sample in self.samples:
            try:
                tensors.append(preprocessing.tensor_from_path(sample.path))
            except (UnidentifiedImageError, OSError) as exc:
                raise DatasetError(f"{sample.path}: unreadable image ({exc})") from exc
        self.images = torch.stack(tensors)
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == idx).sum()) for name, idx in CLASS_FOLDERS.items()}


def _balanced_head(samples: list[Sample], limit: int) -> list[Sample]:
    """The first ``limit`` samples taken alternately from each class (for quick runs)."""
    by_label = [[s for s in samples if s.label == label] for label in (0, 1)]
    picked: list[Sample] = []
    for i in range(max(map(len, by_label))):
        picked.extend(group[i] for group in by_label if i < len(group))
    return sorted(picked[:limit], key=lambda s: (s.label, str(s.path)))


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(keep, held_out)`` with ``fraction`` of each class held out, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for label in labels.unique(sorted=True):
        idx = torch.nonzero(labels == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_held = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) > 1:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def augment(batch: torch.Tensor, generator: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """Random left-right flips and integer shifts (edge-padded) of a ``N x 1 x S x S`` batch."""
    flip = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    if max_shift <= 0:
        return batch
    size = batch.shape[-1]
    padded = torch.nn.functional.pad(batch, (max_shift,) * 4, mode="replicate")
    shifts = torch.randint(0, 2 * max_shift + 1, (len(batch), 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(shifts.tolist())]
    )


#: Augmentation profiles: ``basic`` (flips and shifts, the first seed model's), ``robust``
#: (scanner differences at full strength) and ``mild`` (half the ranges, half the images).
AUGMENTATIONS = ("basic", "mild", "robust")


def _smooth_fields(n: int, size: int, grid: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random smooth fields ``N x 1 x S x S`` in about [-1, 1] (bicubic from a coarse grid)."""
    coarse = torch.rand(n, 1, grid, grid, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bicubic", align_corners=True
    )


def augment_robust(
    batch: torch.Tensor, generator: torch.Generator, max_shift: int = 4, strength: float = 1.0
) -> torch.Tensor:
    """Scanner-difference augmentations of a standardised ``N x 1 x S x S`` batch.

    Flips and shifts (as :func:`augment`), then small rotations (±10°) and scaling
    (0.9-1.1), then on the image's [0, 1] range: gamma 0.7-1.4 (contrast), a smooth
    multiplicative bias field up to exp(±0.35), Gaussian noise with sigma up to 0.06; then
    re-standardised per image, as :mod:`models.preprocessing` does at inference.
    ``strength`` < 1 scales every range down and leaves ``1 - strength`` of the images with
    flips and shifts only.
    """
    batch = augment(batch, generator, max_shift)
    plain = batch
    n, size = len(batch), batch.shape[-1]
    k = strength
    angle = (torch.rand(n, generator=generator) * 2 - 1) * torch.pi / 18 * k
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1 * k
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)],
        1,
    )
    low = batch.amin(dim=(1, 2, 3), keepdim=True)
    grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = torch.nn.functional.grid_sample(
        batch - low, grid, padding_mode="zeros", align_corners=False
    )
    span = batch.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    unit = (batch / span).clamp(0, 1)
    gamma = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 0.7 - 0.3) * k  # 0.7-1.4 at k=1
    unit = unit.pow(gamma)
    bias = torch.rand(n, 1, 1, 1, generator=generator) * 0.35 * k
    unit = unit * torch.exp(bias * _smooth_fields(n, size, 4, generator))
    sigma = torch.rand(n, 1, 1, 1, generator=generator) * 0.06 * k
    unit = unit + sigma * torch.randn(batch.shape, generator=generator)
    mean = unit.mean(dim=(1, 2, 3), keepdim=True)
    std = unit.std(dim=(1, 2, 3), keepdim=True, correction=0)
    out = (unit - mean) / (std + 1e-6)
    if strength >= 1.0:
        return out
    keep = torch.rand(n, generator=generator) >= strength
    return torch.where(keep[:, None, None, None], plain, out)
