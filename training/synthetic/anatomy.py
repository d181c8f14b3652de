"""Real anatomy for the generator: axial slices of the MNI152 T1 template shipped in nilearn.

nilearn's wheel contains ``mni_icbm152_t1_tal_nlin_sym_09a`` (197 x 233 x 189 at 1 mm,
skull-stripped, intensities in [0, 1]), so this works with the network off. The template
has no skull; ``with_skull`` paints a CSF gap, bone with a bright diploic stripe, scalp fat
and skin around the brain, as on the T1 slices of the Kaggle tumour set.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

#: side of the square millimetre canvas every slice is embedded in (1 px = 1 mm)
CANVAS_MM = 256
TEMPLATE_NAME = "nilearn MNI152 T1 2009a sym (1 mm)"


@lru_cache(maxsize=1)
def template_volume() -> np.ndarray:
    """The T1 template as float32 ``x, y, z`` (loaded once per process, offline)."""
    from nilearn.datasets import load_mni152_template

    return np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)


def axial_slice(index: int) -> np.ndarray:
    """Axial slice ``index`` on a ``CANVAS_MM`` square canvas, anterior up, float32 in [0, 1]."""
    volume = template_volume()
    if not 0 <= index < volume.shape[2]:
        raise ValueError(f"slice index {index} outside 0..{volume.shape[2] - 1}")
    plane = volume[:, :, index].T[::-1]  # rows: anterior -> posterior, cols: x
    canvas = np.zeros((CANVAS_MM, CANVAS_MM), dtype=np.float32)
    top = (CANVAS_MM - plane.shape[0]) // 2
    left = (CANVAS_MM - plane.shape[1]) // 2
    canvas[top : top + plane.shape[0], left : left + plane.shape[1]] = plane
    return canvas


def brain_mask(slice_mm: np.ndarray) -> np.ndarray:
    """Boolean mask of brain tissue (the template is zero outside the brain)."""
    return ndimage.binary_opening(slice_mm > 0.05, iterations=1)


def with_skull(slice_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The slice with CSF, skull and scalp layers painted around the (filled) brain outline."""
    mask = brain_mask(slice_mm)
    if not mask.any():
        return slice_mm
    head = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=12))
    outside = ndimage.distance_transform_edt(~head).astype(np.float32)
    # Layer thickness varies smoothly around the head (thicker occiput, thin temporal bone).
    rows, cols = np.indices(slice_mm.shape, dtype=np.float32)
    cy, cx = ndimage.center_of_mass(head)
    theta = np.arctan2(rows - cy, cols - cx)
    scale = 1.0 + sum(
        rng.uniform(0.0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3)
    )
    depth = outside / (scale * rng.uniform(0.85, 1.2))
    # depth (mm) -> intensity: CSF gap, inner table, diploe, outer table, scalp fat, skin, air.
    knots = [0.0, 2.0, 2.6, 4.0, 5.0, 6.4, 7.2, 11.5, 12.5, 14.0, 15.0]
    fat = rng.uniform(0.55, 0.85)
    values = [0.12, 0.1, 0.05, 0.35, 0.05, 0.05, fat, fat * 0.9, 0.45, 0.35, 0.0]
    layers = np.interp(depth, knots, values).astype(np.float32)
    layers *= ndimage.gaussian_filter(rng.normal(1.0, 0.15, slice_mm.shape), 2.0).astype(np.float32)
    out = np.where(head, slice_mm, layers)
    # Inside the filled outline but outside tissue (sulci between lobes): dark CSF.
    out = np.where(head & ~mask, np.maximum(slice_mm, 0.1), out)
    return np.clip(out, 0.0, None).astype(np.float32)
