"""Offline, deterministic brain-MRI slice generator (real template anatomy + synthetic lesions)."""

from training.synthetic.dataset import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    find_manifest,
    generate_dataset,
)
from training.synthetic.difficulty import PRESETS, Difficulty, preset

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "PRESETS",
    "Difficulty",
    "find_manifest",
    "generate_dataset",
    "preset",
]
