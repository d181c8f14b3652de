"""Does the encrypted model say what the plaintext model says? Two real parties decide.

Party 1 reads only the checkpoint; party 0 reads only the eval images. The plaintext
reference is computed afterwards in this (the model developer's) process, which may see both.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.inference import IMAGE_OWNER, MODEL_OWNER, EncryptedClassifier
from models.mpc import run_parties
from models.preprocessing import Preprocessing
from training.data import ImageFolder


def _party(rank: int, checkpoint_path: str, eval_dir: str, limit: int | None, batch_size: int):
    from models.crypten_compat import load_crypten

    crypten = load_crypten()
    comm = crypten.communicator.get()
    classifier = EncryptedClassifier.for_party(crypten, rank, checkpoint_path)
    images = None
    if rank == IMAGE_OWNER:
        size = classifier.card.architecture.image_size
        images = ImageFolder(Path(eval_dir), Preprocessing(size), limit=limit).images
    count = comm.broadcast_obj(None if images is None else len(images), IMAGE_OWNER)
    differences, seconds = [], []
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        batch = None if images is None else images[start : start + n]
        began = time.perf_counter()
        revealed = classifier.logit_differences(batch, n)
        seconds.append((time.perf_counter() - began) / n)
        if revealed is not None:
            differences.append(revealed)
    if rank == MODEL_OWNER:
        return None
    return torch.cat(differences), seconds


def validate_encrypted(
    checkpoint_path: Path,
    eval_dir: Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    provider: str = "TFP",
) -> dict:
    """Plaintext vs encrypted accuracy, argmax agreement, logit error and speed on ``eval_dir``."""
    encrypted, seconds = run_parties(
        _party, str(checkpoint_path), str(eval_dir), limit, batch_size, provider=provider
    )[IMAGE_OWNER]
    checkpoint = load_checkpoint(checkpoint_path)
    data = ImageFolder(
        Path(eval_dir), Preprocessing(checkpoint.architecture.image_size), limit=limit
    )
    with torch.no_grad():
        logits = checkpoint.model()(data.images)
    plain = logits[:, 1] - logits[:, 0]  # unscaled logit difference
    encrypted_unscaled = encrypted * checkpoint.temperature
    plain_label, encrypted_label = (plain > 0).long(), (encrypted_unscaled > 0).long()
    return {
        "images": len(data),
        "backbone": checkpoint.architecture.backbone,
        "provider": provider,
        "batch_size": batch_size,
        "plaintext_accuracy": float((plain_label == data.labels).float().mean()),
        "encrypted_accuracy": float((encrypted_label == data.labels).float().mean()),
        "argmax_agreement_pct": 100.0 * float((plain_label == encrypted_label).float().mean()),
        "max_abs_logit_difference_error": float((encrypted_unscaled - plain).abs().max()),
        "seconds_per_image": statistics.median(seconds),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m training.encrypted_validation",
        description="Run a checkpoint encrypted (two real parties) and compare with plaintext.",
    )
    parser.add_argument("--checkpoint", type=Path, default=Path("models/lenet.pth"))
    parser.add_argument("--eval-dir", type=Path, default=Path("data/mri/eval"))
    parser.add_argument("--limit", type=int, default=None, help="images (balanced); default all")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--provider", choices=("TFP", "TTP"), default="TFP")
    args = parser.parse_args(argv)
    report = validate_encrypted(
        args.checkpoint,
        args.eval_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        provider=args.provider,
    )
    print(json.dumps(report, indent=2))
    return 0 if report["argmax_agreement_pct"] >= 99.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
