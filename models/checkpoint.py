"""Checkpoints: weights + public architecture + calibration temperature, in one file.

Loaded with ``weights_only=True``: a checkpoint is user-supplied input, so it may only
contain tensors and plain values, never pickled code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.nets import Architecture, build_model
from models.unfamiliarity import Detector

#: 2: LeNet's first convolution has stride 2 (format-1 LeNet weights would load but mislead).
#: 3: optional unfamiliarity detector and screening decision threshold (format 2 still loads:
#: no detector, threshold 0.5).
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)


class CheckpointError(ValueError):
    """The file is not a crypto-doctor checkpoint this version can read."""


@dataclass(frozen=True)
class Checkpoint:
    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    temperature: float = 1.0
    #: the unfamiliarity detector fitted on the training data (None: no flag is computed)
    detector: Detector | None = None
    #: screening operating point: "tumor" when the calibrated P(tumor) >= this
    decision_threshold: float = 0.5

    def model(self) -> nn.Module:
        """The torch network in eval mode, weights loaded."""
        net = build_model(self.architecture)
        net.load_state_dict(self.state_dict)
        return net.eval()


def save_checkpoint(
    path: Path | str,
    model: nn.Module,
    arch: Architecture,
    temperature: float,
    *,
    detector: Detector | None = None,
    decision_threshold: float = 0.5,
) -> str:
    """Write the checkpoint and return the sha256 of the written file."""
    if not 0.0 < decision_threshold < 1.0:
        raise ValueError("decision_threshold must be in (0, 1)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "temperature": float(temperature),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "decision_threshold": float(decision_threshold),
        "detector": None if detector is None else detector.to_payload(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


def load_checkpoint(path: Path | str) -> Checkpoint:
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: not a crypto-doctor checkpoint (format {FORMAT_VERSION})")
    detector = payload.get("detector")
    try:
        return Checkpoint(
            architecture=Architecture(**payload["architecture"]),
            state_dict=payload["state_dict"],
            temperature=float(payload["temperature"]),
            detector=None if detector is None else Detector.from_payload(detector),
            decision_threshold=float(payload.get("decision_threshold", 0.5)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint ({exc})") from exc


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def benchmark_checkpoint(
    models_dir: Path, model: str, workdir: Path, image_size: int | None = None
) -> tuple[Path, str]:
    """``models_dir/<model>.pth`` if trained (at ``image_size``, when given), else freshly
    initialised weights in ``workdir``. ``model`` is a backbone, or ``resnet18-mpc+reluN``:
    that backbone with ReLU in its last N residual stages (``Architecture.relu_stages``).

    For timing runs: encrypted latency does not depend on the weights' values. The second
    item says which one was used, for the benchmark's table.
    """
    backbone, _, relu = model.partition("+relu")
    relu_stages = int(relu) if relu else 0
    trained = Path(models_dir) / f"{model}.pth"
    if trained.exists():
        arch = load_checkpoint(trained).architecture
        if (image_size is None or arch.image_size == image_size) and (
            arch.backbone,
            arch.relu_stages,
        ) == (backbone, relu_stages):
            return trained, "trained"
    from models.nets import Architecture, default_architecture

    base = default_architecture(backbone)
    arch = Architecture(backbone, image_size or base.image_size, base.activation, relu_stages)
    path = Path(workdir) / f"{model}-{arch.image_size}-random.pth"
    save_checkpoint(path, build_model(arch).eval(), arch, 1.0)
    return path, "random init"
