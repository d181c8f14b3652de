"""Generated hospitals: one data folder per site, each with its own scanner and case mix.

Real hospitals differ in scanner contrast, noise, bias field, and in which patients they see
(lesion prevalence and size). Each :class:`SiteProfile` shifts the generator's
:class:`~training.synthetic.difficulty.Difficulty` ranges and the tumour fraction, so the
folders are non-IID the way hospital data are. The common eval set (the model owner's) is
drawn with the standard profile, from its own random stream.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from training.synthetic.dataset import GENERATOR_VERSION, MANIFEST_NAME, SplitSpec, write_split
from training.synthetic.difficulty import Difficulty


@dataclass(frozen=True)
class SiteProfile:
    """One hospital's scanner and case mix."""

    name: str
    #: fraction of the site's scans that show a tumour
    prevalence: float
    gamma: tuple[float, float]
    noise_sigma: tuple[float, float]
    bias_strength: tuple[float, float]
    window: tuple[float, float]
    lesion_radius_mm: tuple[float, float]

    def difficulty(self) -> Difficulty:
        return replace(
            Difficulty(),
            gamma=self.gamma,
            noise_sigma=self.noise_sigma,
            bias_strength=self.bias_strength,
            window=self.window,
            lesion_radius_mm=self.lesion_radius_mm,
        )


#: Four sites that differ the way real ones do; more hospitals cycle through them with
#: their own seeds.
SITES: tuple[SiteProfile, ...] = (
    # a university hospital: modern scanner, many referrals with tumours
    SiteProfile("A", 0.6, (0.9, 1.1), (0.005, 0.02), (0.0, 0.1), (0.9, 1.0), (8.0, 25.0)),
    # a district hospital: older scanner, noisier, stronger bias field, fewer tumours
    SiteProfile("B", 0.35, (0.8, 1.0), (0.03, 0.07), (0.15, 0.35), (0.85, 1.0), (8.0, 25.0)),
    # a screening centre: low prevalence, small early lesions, bright display window
    SiteProfile("C", 0.25, (1.0, 1.3), (0.005, 0.03), (0.0, 0.2), (0.95, 1.1), (5.0, 15.0)),
    # an oncology centre: high prevalence, large lesions, dark contrast profile
    SiteProfile("D", 0.7, (1.2, 1.5), (0.01, 0.04), (0.05, 0.2), (0.8, 0.95), (12.0, 28.0)),
)


def site_profile(index: int) -> SiteProfile:
    return SITES[index % len(SITES)]


def generate_site(
    root: Path, profile: SiteProfile, *, count: int, seed: int, progress: bool = False
) -> Path:
    """Write one hospital's folder (``root/yes``, ``root/no``, ``root/dataset.json``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    difficulty = profile.difficulty()
    split = write_split(
        root, SplitSpec("train", count, profile.prevalence), seed, difficulty, progress
    )
    _manifest(root, seed, {"train": split}, difficulty, site=asdict(profile))
    return root


def generate_eval(root: Path, *, count: int, seed: int, progress: bool = False) -> Path:
    """The model owner's common eval set: standard profile, balanced, own random stream."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    split = write_split(root, SplitSpec("eval", count), seed, Difficulty(), progress)
    _manifest(root, seed, {"eval": split}, Difficulty(), site=None)
    return root


def _manifest(
    root: Path,
    seed: int,
    splits: dict[str, Any],
    difficulty: Difficulty,
    site: dict[str, Any] | None,
) -> None:
    manifest = {
        "generator": "training.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "complete": True,
        "splits": splits,
        "difficulty": difficulty.to_dict(),
        "site_profile": site,
        "layout": "Kaggle brain-tumor-detection: yes/, no/",
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _clear(root: Path) -> None:
    """Remove an earlier generation of this folder; never a folder the generator did not write."""
    folders = [root / label for label in ("yes", "no") if (root / label).is_dir()]
    if folders and not (root / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{root} holds yes/ or no/ but no {MANIFEST_NAME}: not overwriting")
    for folder in folders:
        shutil.rmtree(folder)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
