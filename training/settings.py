"""Training settings: one frozen dataclass built from CLI flags with environment fallbacks.

The flags follow the original write-up::

    python -m training --source-dir-train DIR --source-dir-eval DIR \
        --training-run-out models/resnet18.pth --backbone resnet18 --max-epochs 5 \
        --validate-encrypted True
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from models.nets import ACTIVATIONS, BACKBONES

ENV_TRAIN_DIR = "CRYPTO_DOCTOR_TRAIN_DIR"
ENV_EVAL_DIR = "CRYPTO_DOCTOR_EVAL_DIR"
ENV_NUM_THREADS = "CRYPTO_DOCTOR_NUM_THREADS"


@dataclass(frozen=True)
class TrainSettings:
    source_dir_train: Path
    source_dir_eval: Path
    training_run_out: Path
    backbone: str = "lenet"
    activation: str | None = None  # None: the backbone's default (quad for LeNet)
    image_size: int = 64
    max_epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_threads: int = 2
    calibration_fraction: float = 0.15
    augment: bool = True
    train_limit: int | None = None
    eval_limit: int | None = None
    validate_encrypted: bool = False
    encrypted_limit: int | None = 32
    progress: bool = True

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def str_bool(text: str) -> bool:
    """``True``/``False`` as the write-up passes them (also yes/no/1/0, any case)."""
    value = text.strip().lower()
    if value in {"true", "yes", "1", "on"}:
        return True
    if value in {"false", "no", "0", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _limit(text: str) -> int | None:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0 = no limit)")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training", description="Train, calibrate and evaluate a tumour classifier."
    )
    p.add_argument(
        "--source-dir-train", type=Path, help=f"folder with yes/ and no/ (env {ENV_TRAIN_DIR})"
    )
    p.add_argument(
        "--source-dir-eval", type=Path, help=f"folder with yes/ and no/ (env {ENV_EVAL_DIR})"
    )
    p.add_argument(
        "--training-run-out", type=Path, help="checkpoint path (default models/<backbone>.pth)"
    )
    p.add_argument("--backbone", choices=BACKBONES, default="lenet")
    p.add_argument(
        "--activation", choices=ACTIVATIONS, help="default: quad for lenet, relu for resnet18"
    )
    p.add_argument("--image-size", type=_positive(int), default=64)
    p.add_argument("--max-epochs", type=_positive(int), default=5)
    p.add_argument("--batch-size", type=_positive(int), default=32)
    p.add_argument("--lr", type=_positive(float), default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--num-threads",
        type=_positive(int),
        help=f"torch CPU threads (env {ENV_NUM_THREADS}, default 2)",
    )
    p.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.15,
        help="share of the training folder held out to fit the temperature",
    )
    p.add_argument(
        "--augment", type=str_bool, default=True, help="random flips/shifts while training"
    )
    p.add_argument(
        "--train-limit", type=_limit, default=None, help="use at most N training images (0 = all)"
    )
    p.add_argument(
        "--eval-limit", type=_limit, default=None, help="use at most N eval images (0 = all)"
    )
    p.add_argument(
        "--validate-encrypted",
        type=str_bool,
        default=False,
        help="True: run the two-party encrypted model on eval images",
    )
    p.add_argument(
        "--encrypted-limit",
        type=_limit,
        default=32,
        help="eval images for --validate-encrypted (0 = all)",
    )
    p.add_argument("--progress", type=str_bool, default=True, help="tqdm progress bars")
    return p


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> TrainSettings:
    """Settings from ``argv``; data folders and thread count fall back to the environment."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    train_dir = args.source_dir_train or _env_path(environ, ENV_TRAIN_DIR)
    eval_dir = args.source_dir_eval or _env_path(environ, ENV_EVAL_DIR)
    if train_dir is None or eval_dir is None:
        parser.error(
            f"--source-dir-train and --source-dir-eval are required (or {ENV_TRAIN_DIR}/{ENV_EVAL_DIR})"
        )
    if not 0.0 <= args.calibration_fraction < 0.9:
        parser.error("--calibration-fraction must be in [0, 0.9)")
    threads = args.num_threads or int(environ.get(ENV_NUM_THREADS, "2"))
    return TrainSettings(
        source_dir_train=train_dir,
        source_dir_eval=eval_dir,
        training_run_out=args.training_run_out or Path("models") / f"{args.backbone}.pth",
        backbone=args.backbone,
        activation=args.activation,
        image_size=args.image_size,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        num_threads=threads,
        calibration_fraction=args.calibration_fraction,
        augment=args.augment,
        train_limit=args.train_limit,
        eval_limit=args.eval_limit,
        validate_encrypted=args.validate_encrypted,
        encrypted_limit=args.encrypted_limit,
        progress=args.progress,
    )


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "").strip()
    return Path(value) if value else None
