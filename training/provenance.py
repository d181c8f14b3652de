"""The model's "passport": where a checkpoint came from, written beside it as JSON."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from training.synthetic import find_manifest


@dataclass(frozen=True)
class OutputPaths:
    """Where one run writes: the checkpoint and its companions, named after its stem."""

    checkpoint: Path
    metrics: Path
    provenance: Path
    curves: Path
    reliability: Path

    def named(self) -> list[tuple[str, Path]]:
        """``(name, path)`` of every output, in the order above."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def output_paths(checkpoint: Path) -> OutputPaths:
    """Companion files named after the checkpoint's stem: ``models/lenet.pth`` -> ``models/lenet.*``."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.with_suffix("")
    return OutputPaths(
        checkpoint=checkpoint,
        metrics=stem.with_name(stem.name + ".metrics.json"),
        provenance=stem.with_name(stem.name + ".provenance.json"),
        curves=stem.with_name(stem.name + ".curves.png"),
        reliability=stem.with_name(stem.name + ".reliability.png"),
    )


# The records below are JSON written into the provenance file: plain dicts at that edge.


def data_record(directory: Path, fingerprint: str, counts: dict[str, int]) -> dict[str, Any]:
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
    architecture: dict[str, Any],
    temperature: float,
    train: dict[str, Any],
    evaluation: dict[str, Any],
    metrics_summary: dict[str, Any],
    settings: dict[str, Any],
    command: list[str],
    now: dt.datetime,
) -> dict[str, Any]:
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
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return "unknown"
