"""Compose one labelled slice: template anatomy -> (lesion) -> geometry -> intensity nuisances.

Everything random comes from the ``numpy.random.Generator`` passed in, in a fixed order,
so a given seed always yields the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.synthetic.anatomy import CANVAS_MM, axial_slice, brain_mask, with_skull
from training.synthetic.difficulty import Difficulty
from training.synthetic.lesions import Lesion, draw_lesion, paint_lesion

#: head + skull spans about this many mm; it fills ~90 % of the image's short side at zoom 1
FIELD_OF_VIEW_MM = 215.0


@dataclass(frozen=True)
class RenderedSlice:
    pixels: np.ndarray  # uint8, H x W
    slice_index: int
    lesion: Lesion | None


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], grid: int) -> np.ndarray:
    """Random smooth field in [-1, 1]: a ``grid x grid`` lattice upsampled with cubic splines."""
    coarse = rng.uniform(-1.0, 1.0, (grid, grid))
    field = ndimage.zoom(coarse, (shape[0] / grid, shape[1] / grid), order=3, mode="nearest")
    field = field[: shape[0], : shape[1]]
    return (field / (np.abs(field).max() + 1e-6)).astype(np.float32)


def _output_shape(rng: np.random.Generator) -> tuple[int, int]:
    """Image size like the Kaggle set's: mostly 200-320 px, sometimes not square."""
    side = int(rng.integers(200, 321))
    if rng.random() < 0.35:
        return side, int(round(side * rng.uniform(0.85, 1.2)))
    return side, side


def _geometry(
    canvas: np.ndarray, shape: tuple[int, int], difficulty: Difficulty, rng: np.random.Generator
) -> np.ndarray:
    """Resample the mm canvas to the output grid with zoom, rotation, shift, flip and warp."""
    height, width = shape
    mm_per_px = FIELD_OF_VIEW_MM / (min(shape) * rng.uniform(*difficulty.zoom))
    angle = np.deg2rad(rng.uniform(-difficulty.rotation_deg, difficulty.rotation_deg))
    shift = rng.uniform(-difficulty.shift_fraction, difficulty.shift_fraction, 2) * FIELD_OF_VIEW_MM
    flip = -1.0 if rng.random() < difficulty.flip_probability else 1.0
    rows, cols = np.indices(shape, dtype=np.float32)
    y = (rows - (height - 1) / 2) * mm_per_px
    x = (cols - (width - 1) / 2) * mm_per_px * flip
    cos, sin = np.cos(angle), np.sin(angle)
    centre = (CANVAS_MM - 1) / 2
    src_r = centre + cos * y - sin * x + shift[0]
    src_c = centre + sin * y + cos * x + shift[1]
    warp_r = _smooth_field(rng, canvas.shape, 5) * difficulty.warp_mm
    warp_c = _smooth_field(rng, canvas.shape, 5) * difficulty.warp_mm
    coords = np.stack([src_r, src_c])
    src_r = src_r + ndimage.map_coordinates(warp_r, coords, order=1, mode="nearest")
    src_c = src_c + ndimage.map_coordinates(warp_c, coords, order=1, mode="nearest")
    return ndimage.map_coordinates(canvas, np.stack([src_r, src_c]), order=1, mode="constant")


def _intensity(image: np.ndarray, difficulty: Difficulty, rng: np.random.Generator) -> np.ndarray:
    """Bias field, gamma, display window, then Rician noise; returns float in [0, 1].

    The window maps the 99.5th percentile to ``window`` x full scale, as a viewer's auto
    window does, so gain changes never wipe out a lesion by saturating the whole brain.
    """
    bias = rng.uniform(*difficulty.bias_strength) * _smooth_field(rng, image.shape, 3)
    image = np.power(np.clip(image * np.exp(bias), 0, None), rng.uniform(*difficulty.gamma))
    level = float(np.percentile(image, 99.5)) or 1.0
    image = image / level * rng.uniform(*difficulty.window)
    sigma = rng.uniform(*difficulty.noise_sigma)
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.clip(np.hypot(real, imag), 0.0, 1.0)


def render_slice(tumour: bool, difficulty: Difficulty, rng: np.random.Generator) -> RenderedSlice:
    """One grayscale slice; ``tumour`` decides whether a lesion is painted into the brain."""
    index = int(rng.integers(difficulty.slice_index[0], difficulty.slice_index[1] + 1))
    canvas = axial_slice(index)
    mask = brain_mask(canvas)
    lesion = None
    if tumour:
        lesion = draw_lesion(mask, difficulty, rng)
        canvas = paint_lesion(canvas, mask, lesion, rng)
    if rng.random() < difficulty.skull_probability:
        canvas = with_skull(canvas, rng)
    shape = _output_shape(rng)
    image = _intensity(_geometry(canvas, shape, difficulty, rng), difficulty, rng)
    return RenderedSlice(np.round(image * 255).astype(np.uint8), index, lesion)
