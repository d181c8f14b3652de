"""Two checkpoints on the same eval images: AUC of each and a paired-bootstrap CI of the gap.

    python -m training.compare --eval-dir data/mri/eval \
        --checkpoint models/resnet18.pth --checkpoint models/resnet18-mpc.pth

Paired: every bootstrap resample draws the same images for both models, so the interval is
that of the *difference* on this eval set (much narrower than two separate intervals).
Resampling is stratified (positives and negatives separately), so every resample has both.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.preprocessing import Preprocessing
from training.data import ImageFolder
from training.loop import predict_logits
from training.metrics import roc_auc


@dataclass(frozen=True)
class PairedAUC:
    images: int
    auc_a: float
    auc_b: float
    #: auc_b - auc_a, and its percentile bootstrap interval
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_bootstrap_auc(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedAUC:
    """AUC of ``a`` and ``b`` on the same labelled images, and a CI of ``AUC_b - AUC_a``."""
    labels = np.asarray(labels).astype(bool)
    if not len(scores_a) == len(scores_b) == len(labels):
        raise ValueError("both models must be scored on the same images")
    positives, negatives = np.flatnonzero(labels), np.flatnonzero(~labels)
    if not len(positives) or not len(negatives):
        raise ValueError("the eval set needs both classes")
    rng = np.random.default_rng(seed)
    gaps = np.empty(resamples)
    for i in range(resamples):
        pick = np.concatenate(
            [
                rng.choice(positives, len(positives), replace=True),
                rng.choice(negatives, len(negatives), replace=True),
            ]
        )
        gaps[i] = roc_auc(scores_b[pick], labels[pick]) - roc_auc(scores_a[pick], labels[pick])
    tail = (1.0 - confidence) / 2.0
    auc_a, auc_b = roc_auc(scores_a, labels), roc_auc(scores_b, labels)
    return PairedAUC(
        images=len(labels),
        auc_a=auc_a,
        auc_b=auc_b,
        difference=auc_b - auc_a,
        ci_low=float(np.quantile(gaps, tail)),
        ci_high=float(np.quantile(gaps, 1.0 - tail)),
        confidence=confidence,
        resamples=resamples,
    )


def logit_differences(checkpoint_path: Path, eval_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Plaintext ``logit_tumor - logit_no_tumor`` of a checkpoint on ``eval_dir``, and labels."""
    checkpoint = load_checkpoint(checkpoint_path)
    data = ImageFolder(eval_dir, Preprocessing(checkpoint.architecture.image_size))
    logits = predict_logits(checkpoint.model(), data.images)
    return (logits[:, 1] - logits[:, 0]).numpy(), data.labels.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__)
    parser.add_argument("--eval-dir", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, action="append", required=True)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    if len(args.checkpoint) != 2:
        parser.error("give exactly two --checkpoint (a, then b)")
    torch.set_num_threads(args.num_threads)
    (a, labels), (b, labels_b) = (logit_differences(c, args.eval_dir) for c in args.checkpoint)
    if not np.array_equal(labels, labels_b):
        parser.error("the two checkpoints saw different eval images")
    result = paired_bootstrap_auc(a, b, labels, resamples=args.resamples)
    record = {"a": str(args.checkpoint[0]), "b": str(args.checkpoint[1]), **result.to_dict()}
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
