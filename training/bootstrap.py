"""Make sure the generated data set exists (for the run script, demos and CI)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from training.synthetic import GENERATOR_VERSION, MANIFEST_NAME, generate_dataset

log = logging.getLogger(__name__)
DEFAULT_TRAIN = 1000
DEFAULT_EVAL = 200


def dataset_is_complete(root: Path, *, seed: int, train: int, eval: int) -> bool:
    """True when ``root`` holds a finished generation with this version, seed and counts."""
    manifest_path = Path(root) / MANIFEST_NAME
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    splits = manifest.get("splits", {})
    return (
        manifest.get("complete") is True
        and manifest.get("generator_version") == GENERATOR_VERSION
        and manifest.get("seed") == seed
        and splits.get("train", {}).get("count") == train
        and splits.get("eval", {}).get("count") == eval
    )


def ensure_dataset(
    root: Path, *, seed: int = 0, train: int = DEFAULT_TRAIN, eval: int = DEFAULT_EVAL
) -> Path:
    """Generate ``root/{train,eval}/{yes,no}`` unless that exact data set is already there."""
    root = Path(root)
    if dataset_is_complete(root, seed=seed, train=train, eval=eval):
        log.info("data set present: %s", root)
        return root
    log.info("generating data set in %s (seed %d, %d train, %d eval)", root, seed, train, eval)
    return generate_dataset(root, seed=seed, train=train, eval=eval)
