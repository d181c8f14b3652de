"""``python -m training.privacy_audit``: does the model give away who was in its training set?

A membership-inference attack against a checkpoint, on images known to be training members
and held-out non-members from the same distribution:

* **loss threshold** (Yeom et al. 2018): members tend to have a lower loss; the score is the
  negative cross-entropy of the true label.
* **offline LiRA** (Carlini et al. 2022, "Membership inference attacks from first
  principles", offline variant), with ``--shadow-models K``: the attacker trains K shadow
  models on its own data (``--shadow-dir``, disjoint from the candidates) with the target's
  recipe, measures each candidate's logit-scaled confidence ``log(p / (1 - p))`` under them
  (the "out" distribution), and scores the target's confidence by how far it sits above that
  candidate's own "out" mean, in units of the shadows' pooled standard deviation. This
  calibrates away per-image difficulty, the loss attack's main weakness.

Reported per attack: AUC and advantage (max over thresholds of TPR - FPR), each with a
bootstrap 95% interval (members and non-members resampled separately).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from infra.settings import flag, parse_settings
from models.checkpoint import load_checkpoint
from models.nets import Architecture, build_model
from models.preprocessing import Preprocessing
from training.data import DatasetError, ImageFolder, stratified_split
from training.loop import LoopConfig, predict_logits, train
from training.metrics import roc_auc

log = logging.getLogger("training.privacy_audit")


@dataclass(frozen=True)
class AuditSettings:
    checkpoint: Path | None = field(default=None, metadata=flag("the model to attack"))
    members: Path | None = field(
        default=None,
        metadata=flag(
            "folder of training members (yes/ no/); default: the fit split of the training "
            "folder named in the checkpoint's provenance"
        ),
    )
    non_members: Path | None = field(
        default=None, metadata=flag("folder of held-out images from the same distribution")
    )
    limit: int = field(default=0, metadata=flag("at most N images of each side (0 = all)"))
    shadow_dir: Path | None = field(
        default=None, metadata=flag("the attacker's own images for shadow models (LiRA)")
    )
    shadow_models: int = field(default=0, metadata=flag("shadow models for LiRA (0 = none)"))
    bootstrap_resamples: int = field(default=1000, metadata=flag("bootstrap resamples"))
    seed: int = field(default=0, metadata=flag("seed of the bootstrap and the shadows"))
    num_threads: int = field(default=2, metadata=flag("torch CPU threads"))
    out: Path | None = field(
        default=None, metadata=flag("JSON report path; default <checkpoint stem>.privacy.json")
    )

    def __post_init__(self) -> None:
        if self.checkpoint is None or self.non_members is None:
            raise ValueError("--checkpoint and --non-members are required")
        if self.shadow_models < 0 or self.limit < 0 or self.bootstrap_resamples < 0:
            raise ValueError("--shadow-models, --limit and --bootstrap-resamples must be >= 0")
        if self.shadow_models and self.shadow_dir is None:
            raise ValueError("--shadow-models needs --shadow-dir (the attacker's own images)")
        if self.shadow_models == 1:
            raise ValueError("LiRA needs at least 2 shadow models for a spread")


@dataclass(frozen=True)
class AttackResult:
    """One attack's figures on ``members`` vs ``non_members``."""

    attack: str
    members: int
    non_members: int
    auc: float
    auc_ci95: tuple[float, float]
    advantage: float
    advantage_ci95: tuple[float, float]
    #: TPR at 1% FPR (the low-error regime LiRA argues for)
    tpr_at_1pct_fpr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def advantage(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """max over thresholds of TPR - FPR (members flagged when score >= threshold)."""
    fpr, tpr = _roc(member_scores, non_member_scores)
    return float(np.max(tpr - fpr))


def _roc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.unique(np.concatenate([member_scores, non_member_scores]))[::-1]
    tpr = (member_scores[None, :] >= thresholds[:, None]).mean(axis=1)
    fpr = (non_member_scores[None, :] >= thresholds[:, None]).mean(axis=1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, at: float) -> float:
    fpr, tpr = _roc(member_scores, non_member_scores)
    return float(tpr[fpr <= at].max())


def attack_auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    scores = np.concatenate([member_scores, non_member_scores])
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    return roc_auc(scores, labels)


def evaluate_attack(
    name: str,
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> AttackResult:
    """AUC and advantage with bootstrap 95% intervals (each side resampled on its own)."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(non_member_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    aucs, advs = [], []
    for _ in range(resamples):
        mb = m[rng.integers(0, len(m), len(m))]
        nb = n[rng.integers(0, len(n), len(n))]
        aucs.append(attack_auc(mb, nb))
        advs.append(advantage(mb, nb))

    def ci(values: list[float], point: float) -> tuple[float, float]:
        if not values:
            return (point, point)
        return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))

    auc, adv = attack_auc(m, n), advantage(m, n)
    return AttackResult(
        attack=name,
        members=len(m),
        non_members=len(n),
        auc=auc,
        auc_ci95=ci(aucs, auc),
        advantage=adv,
        advantage_ci95=ci(advs, adv),
        tpr_at_1pct_fpr=tpr_at_fpr(m, n, 0.01),
    )


def true_label_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-image cross-entropy of the true label (temperature 1: the raw network)."""
    logits = predict_logits(model, images)
    return nn.functional.cross_entropy(logits, labels, reduction="none").double().numpy()


def scaled_confidence(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """LiRA's statistic: ``log(p_y / (1 - p_y))``, computed stably from the logits."""
    logits = predict_logits(model, images).double()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.gather(1, (1 - labels)[:, None]).squeeze(1)  # two classes
    return (true - other).numpy()


def loss_attack(
    model: nn.Module,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> AttackResult:
    """Yeom et al.'s loss-threshold attack: a lower loss means "member"."""
    return evaluate_attack(
        "loss_threshold",
        -true_label_loss(model, *members),
        -true_label_loss(model, *non_members),
        resamples=resamples,
        seed=seed,
    )


def lira_offline(
    model: nn.Module,
    arch: Architecture,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    shadow_pool: tuple[torch.Tensor, torch.Tensor],
    recipe: LoopConfig,
    *,
    shadows: int,
    train_size: int,
    resamples: int = 1000,
    seed: int = 0,
) -> AttackResult:
    """Offline LiRA with ``shadows`` models, each trained on ``train_size`` random images of
    the attacker's ``shadow_pool`` (never a candidate) with the target's ``recipe``."""
    candidates = torch.cat([members[0], non_members[0]])
    candidate_labels = torch.cat([members[1], non_members[1]])
    generator = torch.Generator().manual_seed(seed)
    out_stats = []
    for k in range(shadows):
        torch.manual_seed(seed * 1000 + k)
        shadow = build_model(arch)
        pick = torch.randperm(len(shadow_pool[1]), generator=generator)[:train_size]
        empty = (shadow_pool[0][:0], shadow_pool[1][:0])
        train(
            shadow,
            (shadow_pool[0][pick], shadow_pool[1][pick]),
            empty,
            empty,
            LoopConfig(**{**asdict(recipe), "seed": seed * 1000 + k, "progress": False}),
        )
        out_stats.append(scaled_confidence(shadow, candidates, candidate_labels))
        log.info("shadow model %d/%d trained on %d images", k + 1, shadows, len(pick))
    out = np.stack(out_stats)  # shadows x candidates
    mean = out.mean(axis=0)
    spread = float(out.std(axis=0, ddof=1).mean()) + 1e-6  # pooled: few shadows per candidate
    target = scaled_confidence(model, candidates, candidate_labels)
    score = (target - mean) / spread
    n_members = len(members[1])
    return evaluate_attack(
        "lira_offline", score[:n_members], score[n_members:], resamples=resamples, seed=seed
    )


# ---------------------------------------------------------------------- CLI


def _folder(path: Path, image_size: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    folder = ImageFolder(path, Preprocessing(image_size), limit or None)
    return folder.images, folder.labels


def members_from_provenance(checkpoint: Path, image_size: int, limit: int) -> tuple[
    tuple[torch.Tensor, torch.Tensor], dict[str, Any]
]:  # fmt: skip
    """The fit split the central run trained on, rebuilt from its provenance's settings."""
    provenance_path = checkpoint.with_suffix("").with_name(
        checkpoint.with_suffix("").name + ".provenance.json"
    )
    if not provenance_path.is_file():
        raise DatasetError(f"no {provenance_path.name} beside the checkpoint: pass --members")
    settings = json.loads(provenance_path.read_text()).get("settings", {})
    if "source_dir_train" not in settings:
        raise DatasetError(f"{provenance_path.name} names no training folder: pass --members")
    folder = ImageFolder(
        Path(settings["source_dir_train"]),
        Preprocessing(image_size),
        settings.get("train_limit") or None,
    )
    keep, _ = stratified_split(
        folder.labels, float(settings.get("calibration_fraction", 0.0)), int(settings["seed"])
    )
    if limit:
        keep = keep[:limit]
    return (folder.images[keep], folder.labels[keep]), settings


def run_audit(settings: AuditSettings) -> dict[str, Any]:
    assert settings.checkpoint is not None and settings.non_members is not None
    torch.set_num_threads(settings.num_threads)
    checkpoint = load_checkpoint(settings.checkpoint)
    arch = checkpoint.architecture
    model = checkpoint.model()
    train_settings: dict[str, Any] = {}
    if settings.members is not None:
        members = _folder(settings.members, arch.image_size, settings.limit)
    else:
        members, train_settings = members_from_provenance(
            settings.checkpoint, arch.image_size, settings.limit
        )
    non_members = _folder(settings.non_members, arch.image_size, settings.limit)
    attacks = [
        loss_attack(
            model, members, non_members,
            resamples=settings.bootstrap_resamples, seed=settings.seed,
        )
    ]  # fmt: skip
    if settings.shadow_models:
        assert settings.shadow_dir is not None
        pool = _folder(settings.shadow_dir, arch.image_size, 0)
        recipe = LoopConfig(
            max_epochs=int(train_settings.get("max_epochs", 5)),
            batch_size=int(train_settings.get("batch_size", 32)),
            lr=float(train_settings.get("lr", 1e-3)),
            augment=bool(train_settings.get("augment", True)),
            augmentation=str(train_settings.get("augmentation", "robust")),
            progress=False,
        )
        attacks.append(
            lira_offline(
                model, arch, members, non_members, pool, recipe,
                shadows=settings.shadow_models,
                train_size=min(len(pool[1]), len(members[1])),
                resamples=settings.bootstrap_resamples, seed=settings.seed,
            )
        )  # fmt: skip
    report = {
        "checkpoint": str(settings.checkpoint),
        "members": str(settings.members or "fit split from the provenance"),
        "non_members": str(settings.non_members),
        "attacks": {a.attack: a.to_dict() for a in attacks},
        "note": "AUC 0.5 and advantage 0 = the attacker learns nothing about membership",
    }
    out = settings.out or settings.checkpoint.with_suffix("").with_name(
        settings.checkpoint.with_suffix("").name + ".privacy.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for a in attacks:
        log.info(
            "%s: AUC %.3f [%.3f, %.3f], advantage %.3f [%.3f, %.3f], TPR@1%%FPR %.3f "
            "(%d members, %d non-members)",
            a.attack, a.auc, *a.auc_ci95, a.advantage, *a.advantage_ci95, a.tpr_at_1pct_fpr,
            a.members, a.non_members,
        )  # fmt: skip
    log.info("wrote %s", out)
    return report


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = parse_settings(
        AuditSettings,
        argv,
        env,
        prog="python -m training.privacy_audit",
        description="Membership-inference attack against a checkpoint (loss threshold, LiRA).",
    )
    try:
        run_audit(settings)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
