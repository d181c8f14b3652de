"""The generator's difficulty knob: every random range that decides how hard a slice is.

Difficulty is controlled in two independent places:

* **Lesion conspicuity** (``yes`` class only): radius, contrast (enhancing parts are
  drawn brighter than white matter by ``contrast / 2``; dark lesions darker than their
  surroundings by ``contrast``), the share of bright vs dark lesions, edge sharpness, and
  the chance of the easy tells (enhancing ring, edema halo, mass effect). Small, faint,
  blurry, dark lesions are what makes the task hard: at the 64 px the networks see, one
  pixel is about 3.4 mm, so an 8 mm-radius lesion is a blob of about five pixels across.
* **Nuisance strength** (both classes): slice level, rotation, shift, zoom, flips,
  anatomical warp, bias field, gamma, display window, noise. Strong nuisances hide faint
  lesions (a strong bias field makes healthy white matter as bright as a lesion) and add
  "looks abnormal" variation to healthy slices.

``PRESETS`` holds three named settings; ``standard`` is the default. Measured with the
seed LeNet (64 px, 1000 training images): see ``models/lenet.metrics.json``; the task is
learnable but far from trivial (on the seed-0 eval split a one-feature
"brightest pixel" rule reaches AUC 0.79).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

Range = tuple[float, float]


@dataclass(frozen=True)
class Difficulty:
    """Random ranges (uniform unless noted) for one generated slice."""

    # --- lesion (yes class) ---
    lesion_radius_mm: Range = (8.0, 25.0)
    #: relative intensity change of the lesion against local tissue
    lesion_contrast: Range = (0.3, 0.8)
    #: chance the lesion is brighter than tissue (enhancing, as on T1+contrast); else darker
    hyperintense_probability: float = 0.8
    #: blur of the lesion edge in mm (larger = fuzzier, harder)
    lesion_edge_mm: Range = (0.8, 2.5)
    #: harmonic amplitude of the outline (0 = disc, 0.35 = very irregular)
    lesion_irregularity: float = 0.3
    ring_probability: float = 0.45
    edema_probability: float = 0.5
    #: max outward displacement of surrounding tissue, as a fraction of the lesion radius
    mass_effect: Range = (0.0, 0.6)

    # --- nuisances (both classes) ---
    #: axial template slice indices (1 mm, z = index - 72 mm in MNI space)
    slice_index: tuple[int, int] = (55, 130)
    rotation_deg: float = 12.0
    shift_fraction: float = 0.06
    zoom: Range = (0.85, 1.15)
    #: amplitude (mm) of the smooth random warp that varies head shape between slices
    warp_mm: float = 3.0
    #: multiplicative bias field: exp(strength * smooth field in [-1, 1])
    bias_strength: Range = (0.0, 0.2)
    #: display window: the 99.5th intensity percentile is shown at this fraction of white
    window: Range = (0.85, 1.05)
    gamma: Range = (0.8, 1.25)
    #: Rician noise sigma, relative to full scale
    noise_sigma: Range = (0.005, 0.05)
    skull_probability: float = 0.9
    flip_probability: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Difficulty] = {
    "easy": Difficulty(
        lesion_radius_mm=(12.0, 28.0),
        lesion_contrast=(0.5, 0.9),
        lesion_edge_mm=(0.5, 1.5),
        hyperintense_probability=0.9,
        ring_probability=0.7,
        edema_probability=0.7,
        mass_effect=(0.2, 0.7),
        rotation_deg=5.0,
        shift_fraction=0.03,
        bias_strength=(0.0, 0.1),
        noise_sigma=(0.003, 0.02),
    ),
    "standard": Difficulty(),
    "hard": replace(
        Difficulty(),
        lesion_radius_mm=(4.0, 16.0),
        lesion_contrast=(0.1, 0.45),
        lesion_edge_mm=(1.5, 4.0),
        hyperintense_probability=0.5,
        ring_probability=0.25,
        edema_probability=0.3,
        mass_effect=(0.0, 0.3),
        rotation_deg=20.0,
        bias_strength=(0.1, 0.35),
        noise_sigma=(0.02, 0.08),
    ),
}


def preset(name: str) -> Difficulty:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown difficulty {name!r}; choose from {sorted(PRESETS)}") from None
