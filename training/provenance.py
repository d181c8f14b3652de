"""The model's "passport": where a checkpoint came from, written beside it as JSON."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

import torch

from training.synthetic import find_manifest


def output_paths(checkpoint: Path) -> dict[str, Path]:
    """Companion files named after the checkpoint's stem: ``models/lenet.pth`` -> ``models/lenet.*``."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.with_suffix("")
    return {
        "checkpoint": checkpoint,
        "metrics": stem.with_name(stem.name + ".metrics.json"),
        "provenance": stem.with_name(stem.name + ".provenance.json"),
        "curves": stem.with_name(stem.name + ".curves.png"),
        "reliability": stem.with_name(stem.name + ".reliability.png"),
    }


def data_record(directory: Path, fingerprint: str, counts: dict[str, int]) -> dict:
    """What a data folder was: its path, content fingerprint, class counts, generator manifest."""
    return {
        "dir": str(directory),
        "fingerprint_sha256": fingerprint,
        "class_counts": counts,
        "generator_manifest": find_manifest(directory),
    }


def build_provenance(
    *,
    checkpoint_sha256: str,
    checkpoint_bytes: int,
    architecture: dict,
    temperature: float,
    train: dict,
    evaluation: dict,
    metrics_summary: dict,
    settings: dict,
    command: list[str],
    now: dt.datetime,
) -> dict:
    return {
        "schema": "crypto-doctor/model-provenance/1",
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_bytes": checkpoint_bytes,
        "backbone": architecture["backbone"],
        "architecture": architecture,
        "temperature": temperature,
        "trained_at_utc": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "training_data": train,
        "eval_data": evaluation,
        "metrics": metrics_summary,
        "settings": settings,
        "command": command,
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": _version("numpy"),
            "pillow": _version("PIL"),
        },
    }


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):
        return "unknown"
