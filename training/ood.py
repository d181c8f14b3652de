"""Unfamiliar images: features of a trained model, shift sets, detector fitting and figures.

Features are computed with the *encrypted program's* plaintext path
(``models.encrypted.penultimate`` on the folded parameters), so the detector is fitted on
exactly the numbers the MPC program computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from models.checkpoint import Checkpoint
from models.encrypted import fold, head
from models.encrypted_unfamiliarity import feature_blocks, plain_features
from models.nets import Architecture
from models.preprocessing import Preprocessing
from models.unfamiliarity import Detector, energy, fit, threshold_for_rate
from training.metrics import roc_auc
from training.synthetic.shifts import NO_LABEL, read_shift_manifest

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Outputs:
    """What a model computes for a stack of images (plaintext)."""

    features: torch.Tensor  # (N, D) the detector's feature set
    differences: torch.Tensor  # (N,) temperature-scaled logit differences (what is revealed)
    logits: torch.Tensor  # (N, 2) raw logits (for the energy score)


@torch.no_grad()
def model_outputs(
    checkpoint: Checkpoint, images: torch.Tensor, features: str = "conv", batch: int = 256
) -> Outputs:
    """Features of ``features`` set, revealed differences and raw logits, in plaintext."""
    arch = checkpoint.architecture
    model = checkpoint.model()
    params = fold(model, arch, checkpoint.temperature)
    feats, diffs, logits = [], [], []
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        blocks, last = feature_blocks(arch, params, x, features)
        feats.append(torch.cat(blocks, 1))
        diffs.append(head(arch, params, last).view(-1))
        logits.append(model(x))
    if not feats:
        return Outputs(torch.empty(0, 0), torch.empty(0), torch.empty(0, 2))
    return Outputs(torch.cat(feats), torch.cat(diffs), torch.cat(logits))


@dataclass(frozen=True)
class ShiftSet:
    name: str
    images: torch.Tensor
    labels: torch.Tensor  # NO_LABEL where no tumour question applies
    variants: tuple[str, ...]

    @property
    def labelled(self) -> torch.Tensor:
        return self.labels != NO_LABEL


def load_shift_set(folder: Path, preprocessing: Preprocessing) -> ShiftSet:
    """A generated shift set (``<root>/<split>/<shift>``), preprocessed like any upload."""
    manifest = read_shift_manifest(folder)
    images, labels, variants = [], [], []
    for entry in manifest["images"]:
        with Image.open(Path(folder) / entry["file"]) as image:
            images.append(preprocessing.tensor(image))
        labels.append(int(entry["label"]))
        variants.append(str(entry["variant"]))
    return ShiftSet(
        str(manifest["shift"]), torch.stack(images), torch.tensor(labels), tuple(variants)
    )


def unfamiliarity_auroc(familiar: torch.Tensor, unfamiliar: torch.Tensor) -> float:
    """AUROC of a score separating unfamiliar (positive) from familiar images."""
    scores = torch.cat([familiar, unfamiliar]).double().numpy()
    labels = np.r_[np.zeros(len(familiar)), np.ones(len(unfamiliar))]
    return roc_auc(scores, labels)


def score(
    method: str, detector: Detector | None, outputs: Outputs, temperature: float
) -> torch.Tensor:
    """Plaintext unfamiliarity scores of ``method`` (higher = less familiar)."""
    if method == "energy":
        return energy(outputs.logits, temperature)
    assert detector is not None
    return detector.scores(outputs.features)


def fit_detector(
    method: str,
    feature_set: str,
    train: Outputs,
    train_labels: torch.Tensor,
    calibration: Outputs,
    flag_rate: float,
) -> Detector:
    """Fit on the training split; threshold flags ``flag_rate`` of the calibration split."""
    detector = fit(method, feature_set, train.features, train_labels)
    threshold = threshold_for_rate(detector.scores(calibration.features), flag_rate)
    return detector.with_threshold(threshold, flag_rate)


@torch.no_grad()
def detector_features(
    model: nn.Module, arch: Architecture, temperature: float, images: torch.Tensor, features: str
) -> torch.Tensor:
    params = fold(model, arch, temperature)
    return torch.cat(
        [
            plain_features(arch, params, images[i : i + 256], features)
            for i in range(0, len(images), 256)
        ]
    )


def fit_unfamiliarity(
    model: nn.Module,
    arch: Architecture,
    temperature: float,
    fit_split: tuple[torch.Tensor, torch.Tensor],
    calibration_images: torch.Tensor,
    *,
    method: str,
    features: str,
    flag_rate: float,
) -> Detector:
    """The detector on the fit split; its threshold flags ``flag_rate`` of calibration."""
    images, labels = fit_split
    detector = fit(
        method, features, detector_features(model, arch, temperature, images, features), labels
    )
    calib = detector_features(model, arch, temperature, calibration_images, features)
    threshold = threshold_for_rate(detector.scores(calib), flag_rate)
    return detector.with_threshold(threshold, flag_rate)


def unfamiliarity_record(
    detector: Detector,
    model: nn.Module,
    arch: Architecture,
    temperature: float,
    calibration_images: torch.Tensor,
    eval_images: torch.Tensor,
) -> dict[str, Any]:
    """The detector's public summary and the share of in-distribution images it flags."""
    rates = {}
    for name, images in (("calibration", calibration_images), ("eval", eval_images)):
        feats = detector_features(model, arch, temperature, images, detector.features)
        rates[name] = float(detector.flags(feats).float().mean()) if len(feats) else float("nan")
    return detector.public_summary() | {
        "threshold_chosen_on": "calibration split",
        "flagged_fraction": rates,
        "revealed": "one bit per image (unfamiliar or not), to party 0 only",
    }
