"""Images unlike the training data, to measure the unfamiliarity detector against.

Three shifts, each a mix of variants (the variant of every image is in the manifest):

* ``near`` — brain slices as another scanner or protocol would show them: ``t2`` (contrast
  inverted, CSF bright, as on T2), ``profile`` (another T1 intensity profile: grey/white
  contrast flattened or reversed in part), ``bias`` (strong bias field), ``noise`` (heavy
  Rician noise), ``slices`` (axial levels outside the training range: skull base, vertex).
* ``orientation`` — ``coronal`` and ``sagittal`` slices of the same template.
* ``far`` — not a brain MRI: ``body`` (a synthetic abdomen or limb cross-section),
  ``texture`` (natural-image-like: 1/f noise, dead-leaves shapes), ``blank`` (constant or
  a plain gradient) and ``noise`` (white noise).

``near`` and ``orientation`` images carry a tumour label (half get a lesion), so accuracy
on them can be measured; ``far`` images have none. Two splits from different random
streams: ``dev`` (used to choose the detector and its layer) and ``heldout`` (only ever
reported). Image ``i`` of shift ``s`` in split ``p`` comes from
``default_rng([seed, SHIFT_STREAMS[p], SHIFT_CODES[s], i])``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from training.synthetic.anatomy import CANVAS_MM, brain_mask, template_volume, with_skull
from training.synthetic.dataset import encode_image
from training.synthetic.difficulty import Difficulty
from training.synthetic.lesions import draw_lesion, paint_lesion
from training.synthetic.render import _geometry, _intensity, _output_shape, _smooth_field

SHIFTS_VERSION = "mri-shifts-1"
SHIFTS = ("near", "orientation", "far")
SPLITS = ("dev", "heldout")
SHIFT_STREAMS = {"dev": 11, "heldout": 12}
SHIFT_CODES = {"near": 1, "orientation": 2, "far": 3}
VARIANTS = {
    "near": ("t2", "profile", "bias", "noise", "slices"),
    "orientation": ("coronal", "sagittal"),
    "far": ("body", "texture", "blank", "noise"),
}
MANIFEST = "shifts.json"
#: label of a far-shift image (no tumour question applies)
NO_LABEL = -1


@dataclass(frozen=True)
class ShiftImage:
    pixels: np.ndarray  # uint8 H x W
    variant: str
    label: int  # 1 tumour, 0 healthy, NO_LABEL for far shift


def _on_canvas(plane: np.ndarray) -> np.ndarray:
    canvas = np.zeros((CANVAS_MM, CANVAS_MM), dtype=np.float32)
    top = (CANVAS_MM - plane.shape[0]) // 2
    left = (CANVAS_MM - plane.shape[1]) // 2
    canvas[top : top + plane.shape[0], left : left + plane.shape[1]] = plane
    return canvas


def template_plane(plane: str, index: int) -> np.ndarray:
    """A template slice in ``axial``, ``coronal`` or ``sagittal`` orientation, on the canvas."""
    volume = template_volume()
    if plane == "axial":
        return _on_canvas(volume[:, :, index].T[::-1])
    if plane == "coronal":
        return _on_canvas(volume[:, index, :].T[::-1])  # rows: superior -> inferior
    if plane == "sagittal":
        return _on_canvas(volume[index, :, :].T[::-1])
    raise ValueError(f"unknown plane {plane!r}")


def _brain(
    canvas: np.ndarray, tumour: bool, difficulty: Difficulty, rng: np.random.Generator
) -> np.ndarray:
    """Lesion (if ``tumour``), skull, geometry and intensity, as the training renderer does."""
    mask = brain_mask(canvas)
    if tumour and mask.any():
        canvas = paint_lesion(canvas, mask, draw_lesion(mask, difficulty, rng), rng)
    if rng.random() < difficulty.skull_probability:
        canvas = with_skull(canvas, rng)
    shape = _output_shape(rng)
    return _intensity(_geometry(canvas, shape, difficulty, rng), difficulty, rng)


def _near(variant: str, tumour: bool, rng: np.random.Generator) -> np.ndarray:
    base = Difficulty()
    if variant == "slices":
        low = rng.random() < 0.5
        index = int(rng.integers(25, 50) if low else rng.integers(136, 160))
        return _brain(template_plane("axial", index), tumour, base, rng)
    index = int(rng.integers(base.slice_index[0], base.slice_index[1] + 1))
    canvas = template_plane("axial", index)
    if variant == "bias":
        return _brain(canvas, tumour, replace(base, bias_strength=(0.6, 1.0)), rng)
    if variant == "noise":
        return _brain(canvas, tumour, replace(base, noise_sigma=(0.12, 0.22)), rng)
    mask = brain_mask(canvas)
    if tumour:
        canvas = paint_lesion(canvas, mask, draw_lesion(mask, base, rng), rng)
    if variant == "t2":
        # T2-like: fluid bright, white matter dark; background stays black.
        canvas = np.where(canvas > 0.02, np.clip(1.05 - canvas, 0.05, None), 0.0)
    elif variant == "profile":
        # Another T1 sequence: a non-monotone intensity curve (grey/white contrast changed).
        knots = np.array([0.0, 0.2, 0.45, 0.7, 1.0, 2.0])
        values = np.array([0.0, rng.uniform(0.45, 0.7), rng.uniform(0.6, 0.9), 0.55, 0.8, 1.6])
        canvas = np.interp(canvas, knots, values).astype(np.float32)
    else:
        raise ValueError(f"unknown near-shift variant {variant!r}")
    canvas = canvas.astype(np.float32)
    if rng.random() < base.skull_probability:
        canvas = with_skull(canvas, rng)
    shape = _output_shape(rng)
    return _intensity(_geometry(canvas, shape, base, rng), base, rng)


def _orientation(variant: str, tumour: bool, rng: np.random.Generator) -> np.ndarray:
    volume = template_volume()
    if variant == "coronal":
        index = int(rng.integers(int(volume.shape[1] * 0.3), int(volume.shape[1] * 0.75)))
    else:
        centre = volume.shape[0] // 2
        offset = int(rng.integers(8, 55))
        index = centre + (offset if rng.random() < 0.5 else -offset)
    return _brain(template_plane(variant, index), tumour, Difficulty(), rng)


def _body(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An abdomen (fat ring, organs, spine) or a limb (fat, muscle, bone) cross-section."""
    height, width = shape
    rows, cols = np.indices(shape, dtype=np.float32)
    y = (rows - height / 2) / (height / 2)
    x = (cols - width / 2) / (width / 2)
    image = np.zeros(shape, dtype=np.float32)
    if rng.random() < 0.6:  # abdomen: wide ellipse
        ax, ay = rng.uniform(0.75, 0.95), rng.uniform(0.5, 0.7)
        body = (x / ax) ** 2 + (y / ay) ** 2
        image[body < 1] = rng.uniform(0.7, 0.9)  # subcutaneous fat
        image[body < 0.8] = rng.uniform(0.35, 0.5)  # muscle / organs
        liver = ((x + 0.35) / 0.35) ** 2 + ((y + 0.1) / 0.3) ** 2 < 1
        image[liver & (body < 0.8)] = rng.uniform(0.45, 0.6)
        for side in (-1, 1):
            kidney = ((x - side * 0.3) / 0.1) ** 2 + ((y - 0.2) / 0.14) ** 2 < 1
            image[kidney] = rng.uniform(0.55, 0.7)
        spine = (x / 0.1) ** 2 + ((y - 0.4) / 0.1) ** 2
        image[spine < 1] = 0.9
        image[spine < 0.5] = 0.25
    else:  # limb: one or two bones in muscle and fat
        radius = rng.uniform(0.6, 0.85)
        limb = x**2 + y**2
        image[limb < radius**2] = rng.uniform(0.7, 0.9)
        image[limb < (radius * 0.85) ** 2] = rng.uniform(0.3, 0.45)
        for _ in range(int(rng.integers(1, 3))):
            by, bx = rng.uniform(-0.2, 0.2, 2)
            br = rng.uniform(0.1, 0.18)
            bone = (x - bx) ** 2 + (y - by) ** 2
            image[bone < br**2] = 0.95
            image[bone < (br * 0.6) ** 2] = rng.uniform(0.6, 0.8)  # marrow
    image *= np.exp(0.2 * _smooth_field(rng, shape, 4))
    return ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 0.02, shape)


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if rng.random() < 0.5:  # 1/f ("pink") noise: the power spectrum of natural images
        spectrum = rng.normal(size=shape) + 1j * rng.normal(size=shape)
        fy = np.fft.fftfreq(shape[0])[:, None]
        fx = np.fft.fftfreq(shape[1])[None, :]
        spectrum /= np.maximum(np.hypot(fy, fx), 1.0 / max(shape)) ** rng.uniform(0.8, 1.4)
        image = np.real(np.fft.ifft2(spectrum))
    else:  # dead leaves: overlapping discs of random grey
        image = np.full(shape, rng.uniform(0, 1), dtype=np.float32)
        rows, cols = np.indices(shape)
        for _ in range(int(rng.integers(30, 120))):
            r = rng.uniform(5, max(shape) / 4)
            cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            image[(rows - cy) ** 2 + (cols - cx) ** 2 < r * r] = rng.uniform(0, 1)
    image = image - image.min()
    return image / (image.max() + 1e-6)


def _far(variant: str, rng: np.random.Generator) -> np.ndarray:
    shape = _output_shape(rng)
    if variant == "body":
        image = _body(rng, shape)
    elif variant == "texture":
        image = _texture(rng, shape)
    elif variant == "blank":
        level = rng.uniform(0.0, 1.0)
        if rng.random() < 0.5:
            image = np.full(shape, level, dtype=np.float32)
        else:  # a plain linear gradient
            ramp = np.linspace(0.0, 1.0, shape[1], dtype=np.float32)[None, :]
            image = np.broadcast_to(level * 0.5 + ramp * rng.uniform(0.1, 0.5), shape)
    elif variant == "noise":
        image = rng.uniform(0.0, 1.0, shape) if rng.random() < 0.5 else rng.normal(0.5, 0.2, shape)
    else:
        raise ValueError(f"unknown far-shift variant {variant!r}")
    return np.clip(image, 0.0, 1.0)


def render_shift(shift: str, index: int, seed: int, split: str) -> ShiftImage:
    """Image ``index`` of ``shift`` in ``split``: variants take turns, labels alternate."""
    if shift not in SHIFTS or split not in SPLITS:
        raise ValueError(f"unknown shift {shift!r} or split {split!r}")
    rng = np.random.default_rng([seed, SHIFT_STREAMS[split], SHIFT_CODES[shift], index])
    variants = VARIANTS[shift]
    variant = variants[index % len(variants)]
    if shift == "far":
        return ShiftImage(_to_uint8(_far(variant, rng)), variant, NO_LABEL)
    tumour = (index // len(variants)) % 2 == 1
    render = _near if shift == "near" else _orientation
    return ShiftImage(_to_uint8(render(variant, tumour, rng)), variant, int(tumour))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def generate_shift_set(
    root: Path, shift: str, *, split: str, count: int, seed: int = 0, progress: bool = False
) -> Path:
    """Write ``root/<split>/<shift>/*`` and its ``shifts.json`` (file, variant, label)."""
    out = Path(root) / split / shift
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    indices: Any = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"{split}/{shift}", unit="img")
    entries = []
    for i in indices:
        image = render_shift(shift, i, seed, split)
        rng = np.random.default_rng([seed, SHIFT_STREAMS[split], SHIFT_CODES[shift], i, 99])
        data, suffix = encode_image(image.pixels, rng)
        name = f"{shift}{i + 1:05d}{suffix}"
        (out / name).write_bytes(data)
        entries.append({"file": name, "variant": image.variant, "label": image.label})
    manifest = {
        "generator": "training.synthetic.shifts",
        "version": SHIFTS_VERSION,
        "shift": shift,
        "split": split,
        "seed": [seed, SHIFT_STREAMS[split], SHIFT_CODES[shift]],
        "count": count,
        "variants": list(VARIANTS[shift]),
        "images": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def read_shift_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of one generated shift set (``<root>/<split>/<shift>``)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {MANIFEST}; generate it with scripts/generate_shifts.py"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


#: the random stream of :func:`generate_hospital` (apart from the shift sets' streams)
HOSPITAL_STREAM = 21


def generate_hospital(root: Path, variant: str, *, train: int, eval: int, seed: int = 0) -> Path:
    """A hospital whose scanner shows brains as the near-shift ``variant`` does (e.g.
    ``profile``), in the Kaggle layout: ``root/train`` and ``root/eval``, each with ``yes/``
    and ``no/`` (half of each split has a lesion). For the encrypted fine-tuning benchmark:
    cases from a shifted site to learn from, and eval images from the same site."""
    if variant not in VARIANTS["near"]:
        raise ValueError(f"unknown near-shift variant {variant!r}; choose from {VARIANTS['near']}")
    for split, count, code in (("train", train, 1), ("eval", eval, 2)):
        for label in ("yes", "no"):
            (Path(root) / split / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, HOSPITAL_STREAM, code, i])
            tumour = i % 2 == 1
            pixels = _to_uint8(_near(variant, tumour, rng))
            data, suffix = encode_image(pixels, rng)
            folder = Path(root) / split / ("yes" if tumour else "no")
            (folder / f"{variant}{i + 1:05d}{suffix}").write_bytes(data)
    return Path(root)
