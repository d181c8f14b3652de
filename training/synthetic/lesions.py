"""Synthetic tumour-like lesions painted into brain tissue (the ``yes`` class only).

A lesion is an irregular blob (radius modulated by a few random harmonics) placed at a
random point inside the brain, with optional mass effect (surrounding tissue pushed
outward), an edema-like halo, and either a solid or a ring-enhancing (bright rim,
necrotic core) appearance. Its contrast is relative to the local tissue, with a random
sign, so brightness alone never gives the class away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

from training.synthetic.difficulty import Difficulty


@dataclass(frozen=True)
class Lesion:
    """One drawn lesion (all lengths in canvas millimetres)."""

    row: float
    col: float
    radius: float
    contrast: float  # signed relative intensity change of the solid part
    edge: float
    ring: bool
    edema: bool
    mass_effect: float
    harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase)


def draw_lesion(mask: np.ndarray, difficulty: Difficulty, rng: np.random.Generator) -> Lesion:
    """Random lesion whose centre lies inside ``mask`` (brain tissue), away from its edge."""
    radius = float(rng.uniform(*difficulty.lesion_radius_mm))
    depth = ndimage.distance_transform_edt(mask)
    candidates = np.argwhere(depth >= max(2.0, 0.6 * radius))
    if len(candidates) == 0:
        candidates = np.argwhere(depth >= 0.8 * depth.max())
        radius = min(radius, max(3.0, float(depth.max())))
    row, col = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 2)
    sign = 1.0 if rng.random() < difficulty.hyperintense_probability else -1.0
    harmonics = tuple(
        (
            k,
            float(rng.uniform(0, difficulty.lesion_irregularity) / k**0.5),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for k in (2, 3, 4, 5)
    )
    return Lesion(
        row=float(row),
        col=float(col),
        radius=radius,
        contrast=sign * float(rng.uniform(*difficulty.lesion_contrast)),
        edge=float(rng.uniform(*difficulty.lesion_edge_mm)),
        ring=bool(rng.random() < difficulty.ring_probability),
        edema=bool(rng.random() < difficulty.edema_probability),
        mass_effect=float(rng.uniform(*difficulty.mass_effect)),
        harmonics=harmonics,
    )


def _normalised_distance(lesion: Lesion, shape: tuple[int, int]) -> np.ndarray:
    """Distance from the lesion centre divided by the (irregular) outline radius: 1 = edge."""
    rows, cols = np.indices(shape, dtype=np.float32)
    dy, dx = rows - lesion.row, cols - lesion.col
    theta = np.arctan2(dy, dx)
    outline = lesion.radius * (
        1.0 + sum(a * np.cos(k * theta + phase) for k, a, phase in lesion.harmonics)
    )
    return np.hypot(dy, dx) / np.maximum(outline, 1.0)


def _mass_effect(image: np.ndarray, lesion: Lesion) -> np.ndarray:
    """Push tissue away from the lesion centre (backward radial map, decays with distance).

    Near the surface this can push the brain outline out by a few mm; the skull is drawn
    afterwards around the displaced outline.
    """
    if lesion.mass_effect <= 0:
        return image
    rows, cols = np.indices(image.shape, dtype=np.float32)
    dy, dx = rows - lesion.row, cols - lesion.col
    dist = np.hypot(dy, dx) + 1e-3
    # Smooth bump with compact support (3 radii): far tissue does not move at all.
    reach = np.clip(1.0 - (dist / (3.0 * lesion.radius)) ** 2, 0.0, None) ** 2
    push = lesion.mass_effect * lesion.radius * reach
    shrink = np.maximum(dist - push, 0.0) / dist
    coords = np.stack([lesion.row + dy * shrink, lesion.col + dx * shrink])
    return ndimage.map_coordinates(image, coords, order=1, mode="constant").astype(np.float32)


def paint_lesion(
    image: np.ndarray, mask: np.ndarray, lesion: Lesion, rng: np.random.Generator
) -> np.ndarray:
    """``image`` (canvas, template scale) with ``lesion`` added, confined to brain tissue."""
    image = _mass_effect(image, lesion)
    d = _normalised_distance(lesion, image.shape)
    soft = max(lesion.edge / lesion.radius, 0.05)
    inside = expit((1.0 - d) / (0.25 * soft))
    tissue = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    near = (d > 1.0) & (d < 2.5) & mask
    local = float(np.median(image[near])) if near.any() else 0.6
    local = max(local, 0.25)
    # Enhancing parts are brighter than white matter (T1 + contrast), not just than neighbours.
    white = float(np.percentile(image[mask], 95)) if mask.any() else 0.8
    strength = abs(lesion.contrast)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, image.shape), 1.5).astype(np.float32)
    texture = 1.0 + texture * (0.12 / (texture.std() + 1e-6))
    bright = white * (1.0 + 0.5 * strength)
    if lesion.ring:  # enhancing rim around a dark necrotic core
        rim = np.exp(-(((d - 0.85) / (0.12 + soft)) ** 2))
        core = local * (1.0 - 0.6 * strength) * texture
        target = core * (1.0 - rim) + rim * bright
    elif lesion.contrast > 0:
        target = bright * texture
    else:
        target = local * (1.0 - strength) * texture
    out = image * (1.0 - inside * tissue) + target * inside * tissue
    if lesion.edema:
        halo = np.exp(-(((d - 1.0) / 0.7) ** 2)) * (d > 0.8) * tissue
        out = out * (
            1.0 - 0.6 * abs(lesion.contrast) * halo * (1.0 if lesion.contrast < 0 else -0.5)
        )
    return np.clip(out, 0.0, None).astype(np.float32)  # > 1 allowed: the render windows it
