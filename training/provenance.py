"""The model's "passport": where a checkpoint came from, written beside it as JSON."""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
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


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (temp file, then rename); NaN/inf become null (JSON has none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
