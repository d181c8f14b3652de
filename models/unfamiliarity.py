"""Is this image like the training data? The unfamiliarity detector, fitted by the model owner.

The score is a Mahalanobis distance of the penultimate features ``f`` to the class means
``mu_c``, with one covariance ``Sigma`` shared by the classes (Lee et al., 2018), fitted on
the training split:

    score_c(f) = |(f - mu_c) W|^2 / D,   W W^T = Sigma^-1  (Cholesky),
    unfamiliar  = min_c score_c(f) > threshold

Dividing by the feature dimension ``D`` keeps scores near 1 in distribution, which keeps
them well inside CrypTen's fixed-point range. The same formula with ``mu = 0`` and
``W = I`` is the feature-norm test. The detector's tensors are part of the model owner's
checkpoint and are secret-shared like the weights (``models.encrypted``); only the one
bit ``unfamiliar`` is ever opened, to party 0.

The energy score (Liu et al., 2020) needs both logits and an encrypted log-sum-exp
(exponential and logarithm approximations: many rounds under MPC); it is computed here in
plaintext only, to compare detectors by measurement (``scripts/bench_ood.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: Detectors the encrypted program computes (``energy`` is measured in plaintext only).
METHODS = ("mahalanobis", "pooled_mahalanobis", "feature_norm")


@dataclass(frozen=True)
class Detector:
    """The fitted detector: class means ``(C, D)``, whitening ``(D, D)``, threshold."""

    method: str
    #: which activations the score reads (``models.encrypted_unfamiliarity.FEATURE_SETS``)
    features: str
    means: torch.Tensor
    whitening: torch.Tensor
    threshold: float
    #: share of in-distribution images the threshold flags, as chosen on the calibration split
    target_flag_rate: float

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown detector {self.method!r}; choose from {METHODS}")
        if self.means.dim() != 2 or self.whitening.shape != (self.means.shape[1],) * 2:
            raise ValueError("means must be (C, D) and whitening (D, D)")

    @property
    def classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """``(N,)`` plaintext scores: the smallest per-class distance of each feature row."""
        return class_scores(features.double(), self.means.double(), self.whitening.double()).amin(1)

    def flags(self, features: torch.Tensor) -> torch.Tensor:
        """``(N,)`` booleans: unfamiliar (score above the threshold)."""
        return self.scores(features) > self.threshold

    def with_threshold(self, threshold: float, target_flag_rate: float) -> Detector:
        return Detector(
            self.method, self.features, self.means, self.whitening, threshold, target_flag_rate
        )

    def to_payload(self) -> dict[str, Any]:
        """Tensors and plain values only: loadable with ``torch.load(weights_only=True)``."""
        return {
            "method": self.method,
            "features": self.features,
            "means": self.means.detach().float().clone(),
            "whitening": self.whitening.detach().float().clone(),
            "threshold": float(self.threshold),
            "target_flag_rate": float(self.target_flag_rate),
        }

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> Detector:
        return Detector(
            method=str(payload["method"]),
            features=str(payload["features"]),
            means=torch.as_tensor(payload["means"], dtype=torch.float32),
            whitening=torch.as_tensor(payload["whitening"], dtype=torch.float32),
            threshold=float(payload["threshold"]),
            target_flag_rate=float(payload["target_flag_rate"]),
        )

    def public_summary(self) -> dict[str, Any]:
        """What the provenance record says about the detector (no fitted tensors)."""
        return {
            "method": self.method,
            "features": self.features,
            "classes": self.classes,
            "feature_dim": self.dim,
            "threshold": self.threshold,
            "target_flag_rate": self.target_flag_rate,
        }


def class_scores(features: Any, means: Any, whitening: Any) -> Any:
    """``(N, C)`` distances ``|(f - mu_c) W|^2 / D`` (torch; the encrypted twin is in
    ``models.encrypted_unfamiliarity.unfamiliarity_margins``)."""
    projected = features @ whitening  # (N, D)
    centres = means @ whitening  # (C, D)
    diff = projected.unsqueeze(1) - centres.unsqueeze(0)  # (N, C, D)
    return diff.square().sum(-1) / features.shape[1]


def fit(
    method: str,
    feature_set: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    shrinkage: float = 1e-3,
) -> Detector:
    """Fit a detector on training features (threshold left at +inf: set it on calibration data).

    ``shrinkage`` adds that fraction of the mean variance to the covariance diagonal, so
    features that never vary in training (dead units) do not blow the inverse up.
    """
    features = features.double()
    dim = features.shape[1]
    if method == "feature_norm":
        means = torch.zeros(1, dim, dtype=torch.float64)
        whitening = torch.eye(dim, dtype=torch.float64)
        return Detector(method, feature_set, means.float(), whitening.float(), float("inf"), 0.0)
    if method == "mahalanobis":
        classes = sorted(int(c) for c in labels.unique())
        means = torch.stack([features[labels == c].mean(0) for c in classes])
        centred = torch.cat([features[labels == c] - means[i] for i, c in enumerate(classes)])
    elif method == "pooled_mahalanobis":
        means = features.mean(0, keepdim=True)
        centred = features - means
    else:
        raise ValueError(f"unknown detector {method!r}; choose from {METHODS}")
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    ridge = shrinkage * float(covariance.diagonal().mean()) + 1e-9
    precision = torch.linalg.inv(covariance + ridge * torch.eye(dim, dtype=torch.float64))
    precision = (precision + precision.T) / 2
    whitening = torch.linalg.cholesky(precision)  # precision = W W^T
    return Detector(method, feature_set, means.float(), whitening.float(), float("inf"), 0.0)


def threshold_for_rate(scores: torch.Tensor, flag_rate: float) -> float:
    """The smallest threshold that flags at most ``flag_rate`` of ``scores`` (``score > t``)."""
    if not 0.0 <= flag_rate < 1.0:
        raise ValueError("flag_rate must be in [0, 1)")
    ordered = scores.double().sort().values
    keep = int(torch.ceil(torch.tensor((1.0 - flag_rate) * len(ordered))).item())
    keep = min(max(keep, 1), len(ordered))
    return float(ordered[keep - 1])


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Energy score ``-T logsumexp(logits / T)`` (higher = less familiar); plaintext only."""
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=1)
