"""Does the encrypted model say what the plaintext model says? Two real parties decide.

Party 1 reads only the checkpoint; party 0 reads only the eval images. The plaintext
reference is computed afterwards in this (the model developer's) process, which may see both.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from infra.settings import flag, parse_settings
from models.checkpoint import load_checkpoint
from models.inference import IMAGE_OWNER, MODEL_OWNER, EncryptedClassifier
from models.mpc import PROVIDERS, run_parties
from models.preprocessing import Preprocessing
from training.data import ImageFolder
from training.metrics import roc_auc


@dataclass(frozen=True)
class EncryptedValidation:
    """Encrypted vs plaintext on the same eval images (logit figures unscaled by temperature)."""

    images: int
    backbone: str
    provider: str
    batch_size: int
    plaintext_accuracy: float
    encrypted_accuracy: float
    argmax_agreement_pct: float
    max_abs_logit_difference_error: float
    seconds_per_image: float  # median over batches, party 0's clock
    #: the unfamiliarity bit (None when the checkpoint carries no detector): share of images
    #: whose encrypted bit equals the plaintext detector's, and share flagged
    unfamiliar_agreement_pct: float | None = None
    unfamiliar_flagged_pct: float | None = None
    #: ROC AUC of the logit difference, plaintext and encrypted, on the same images
    plaintext_auc: float | None = None
    encrypted_auc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _party(
    rank: int, checkpoint_path: str, eval_dir: str, limit: int | None, batch_size: int
) -> tuple[list[float], list[float] | None, list[float]] | None:
    from models.crypten_compat import load_crypten

    crypten = load_crypten()
    comm = crypten.communicator.get()
    classifier = EncryptedClassifier.for_party(crypten, rank, checkpoint_path)
    images = None
    if rank == IMAGE_OWNER:
        size = classifier.card.architecture.image_size
        images = ImageFolder(Path(eval_dir), Preprocessing(size), limit=limit).images
    count = comm.broadcast_obj(None if images is None else len(images), IMAGE_OWNER)
    differences: list[torch.Tensor] = []
    flags: list[torch.Tensor] = []
    seconds: list[float] = []
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        batch = None if images is None else images[start : start + n]
        began = time.perf_counter()
        revealed = classifier.outputs(batch, n)
        seconds.append((time.perf_counter() - began) / n)
        if revealed is not None:
            differences.append(revealed[0])
            if revealed[1] is not None:
                flags.append(revealed[1])
    if rank == MODEL_OWNER:
        return None
    # Plain lists: a tensor in the result queue is shared through this process's resource
    # sharer, which is gone once the party exits (the parent then fails to unpickle it).
    return (
        torch.cat(differences).tolist(),
        torch.cat(flags).tolist() if flags else None,
        seconds,
    )


def validate_encrypted(
    checkpoint_path: Path,
    eval_dir: Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    provider: str = "TFP",
) -> EncryptedValidation:
    """Plaintext vs encrypted accuracy, AUC, argmax agreement, logit error and speed on
    ``eval_dir``."""
    encrypted_list, flag_list, seconds = run_parties(
        _party, str(checkpoint_path), str(eval_dir), limit, batch_size, provider=provider
    )[IMAGE_OWNER]
    encrypted = torch.tensor(encrypted_list)
    encrypted_flags = None if flag_list is None else torch.tensor(flag_list)
    checkpoint = load_checkpoint(checkpoint_path)
    data = ImageFolder(
        Path(eval_dir), Preprocessing(checkpoint.architecture.image_size), limit=limit
    )
    with torch.no_grad():
        logits = checkpoint.model()(data.images)
    plain = logits[:, 1] - logits[:, 0]  # unscaled logit difference
    encrypted_unscaled = encrypted * checkpoint.temperature
    plain_label, encrypted_label = (plain > 0).long(), (encrypted_unscaled > 0).long()
    agreement = flagged = None
    if checkpoint.detector is not None and encrypted_flags is not None:
        from models.encrypted import fold
        from models.encrypted_unfamiliarity import plain_features

        arch = checkpoint.architecture
        params = fold(checkpoint.model(), arch, checkpoint.temperature)
        with torch.no_grad():
            features = plain_features(arch, params, data.images, checkpoint.detector.features)
        plain_flags = checkpoint.detector.flags(features)
        agreement = 100.0 * float((plain_flags == (encrypted_flags > 0.5)).float().mean())
        flagged = 100.0 * float((encrypted_flags > 0.5).float().mean())
    return EncryptedValidation(
        images=len(data),
        backbone=checkpoint.architecture.backbone,
        provider=provider,
        batch_size=batch_size,
        plaintext_accuracy=float((plain_label == data.labels).float().mean()),
        encrypted_accuracy=float((encrypted_label == data.labels).float().mean()),
        argmax_agreement_pct=100.0 * float((plain_label == encrypted_label).float().mean()),
        max_abs_logit_difference_error=float((encrypted_unscaled - plain).abs().max()),
        seconds_per_image=statistics.median(seconds),
        unfamiliar_agreement_pct=agreement,
        unfamiliar_flagged_pct=flagged,
        plaintext_auc=_auc(plain, data.labels),
        encrypted_auc=_auc(encrypted_unscaled, data.labels),
    )


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """None when the images hold only one class."""
    if labels.unique().numel() < 2:
        return None
    return roc_auc(scores.numpy(), labels.numpy())


@dataclass(frozen=True)
class ValidationSettings:
    """``python -m training.encrypted_validation``'s flags (env ``CRYPTO_DOCTOR_*``)."""

    checkpoint: Path = field(default=Path("models/lenet.pth"), metadata=flag("checkpoint to run"))
    eval_dir: Path = field(
        default=Path("data/mri/eval"), metadata=flag("folder with yes/ and no/", env="EVAL_DIR")
    )
    limit: int | None = field(
        default=None,
        metadata=flag("images (balanced; 0 = all); default all", env="ENCRYPTED_LIMIT"),
    )
    batch_size: int = field(
        default=8, metadata=flag("images per encrypted forward", env="ENCRYPTED_BATCH_SIZE")
    )
    provider: str = field(default="TFP", metadata=flag(f"Beaver triples: {' or '.join(PROVIDERS)}"))

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise ValueError("--limit must be >= 0 (0 = all)")
        if self.limit == 0:
            object.__setattr__(self, "limit", None)
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be > 0, got {self.batch_size}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"--provider must be one of {PROVIDERS}, not {self.provider!r}")


def main(argv: list[str] | None = None) -> int:
    import json

    settings = parse_settings(
        ValidationSettings,
        argv,
        prog="python -m training.encrypted_validation",
        description="Run a checkpoint encrypted (two real parties) and compare with plaintext.",
    )
    report = validate_encrypted(
        settings.checkpoint,
        settings.eval_dir,
        limit=settings.limit,
        batch_size=settings.batch_size,
        provider=settings.provider,
    )
    print(json.dumps(report.to_dict(), indent=2))
    return 0 if report.argmax_agreement_pct >= 99.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
