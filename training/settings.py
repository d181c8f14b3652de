"""Training settings: one frozen dataclass built from CLI flags with environment fallbacks.

The flags follow the original write-up::

    python -m training --source-dir-train DIR --source-dir-eval DIR \
        --training-run-out models/resnet18.pth --backbone resnet18 --max-epochs 5 \
        --validate-encrypted True

Every field is a flag (``--field-name``) with a ``CRYPTO_DOCTOR_FIELD_NAME`` fallback
(``infra.settings``); the data folders fall back to ``CRYPTO_DOCTOR_TRAIN_DIR`` and
``CRYPTO_DOCTOR_EVAL_DIR``. Limits of 0 mean "no limit".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.settings import ENV_PREFIX, flag, parse_settings
from models.encrypted_unfamiliarity import FEATURE_SETS
from models.nets import ACTIVATIONS, BACKBONES, Architecture, default_architecture
from models.unfamiliarity import METHODS as DETECTORS
from training.data import AUGMENTATIONS
from training.privacy import PUBLIC_IMAGES, DPConfig

ENV_TRAIN_DIR = ENV_PREFIX + "TRAIN_DIR"
ENV_EVAL_DIR = ENV_PREFIX + "EVAL_DIR"


@dataclass(frozen=True)
class TrainSettings:
    # Required: __post_init__ refuses None (infra.settings has no required fields).
    source_dir_train: Path | None = field(
        default=None, metadata=flag("folder with yes/ and no/", env="TRAIN_DIR")
    )
    source_dir_eval: Path | None = field(
        default=None, metadata=flag("folder with yes/ and no/", env="EVAL_DIR")
    )
    # None: models/<backbone>.pth, filled in by __post_init__.
    training_run_out: Path | None = field(
        default=None, metadata=flag("checkpoint path; default models/<backbone>.pth")
    )
    backbone: str = field(default="lenet", metadata=flag(f"one of {', '.join(BACKBONES)}"))
    activation: str | None = field(
        default=None,
        metadata=flag(
            f"one of {', '.join(ACTIVATIONS)}; default quad for lenet, relu for resnet18"
        ),
    )
    relu_stages: int = field(
        default=0,
        metadata=flag("resnet18-mpc: the last N of its 4 residual stages use ReLU (0-4)"),
    )
    image_size: int = field(default=64, metadata=flag("input side in pixels (multiple of 16)"))
    max_epochs: int = field(default=5, metadata=flag("epochs; the best one is kept"))
    batch_size: int = field(default=32, metadata=flag("images per training step"))
    lr: float = field(default=1e-3, metadata=flag("Adam learning rate"))
    weight_decay: float = 1e-4
    seed: int = field(default=0, metadata=flag("seed of the split, initialisation, augmentation"))
    num_threads: int = field(default=2, metadata=flag("torch CPU threads"))
    calibration_fraction: float = field(
        default=0.15,
        metadata=flag("share of the training folder held out to fit the temperature, in [0, 0.9)"),
    )
    augment: bool = field(
        default=True, metadata=flag("True/False: augment while training", valued=True)
    )
    augmentation: str = field(
        default="robust",
        metadata=flag(
            "basic (flips, shifts), robust (+ rotation, scale, contrast, bias field, noise) "
            "or mild (robust at half strength on half the images)"
        ),
    )
    teacher: Path | None = field(
        default=None,
        metadata=flag(
            "distil from this checkpoint's softened outputs as well as the labels (e.g. the "
            "ReLU resnet18 for resnet18-mpc; same image size; not with --dp-epsilon)"
        ),
    )
    distill_weight: float = field(
        default=0.5, metadata=flag("with --teacher: the distillation term's weight, in (0, 1]")
    )
    distill_temperature: float = field(
        default=4.0, metadata=flag("with --teacher: the softmax temperature of both outputs")
    )
    train_limit: int | None = field(
        default=None, metadata=flag("use at most N training images (0 = all)")
    )
    eval_limit: int | None = field(
        default=None, metadata=flag("use at most N eval images (0 = all)")
    )
    validate_encrypted: bool = field(
        default=False,
        metadata=flag("True: run the two-party encrypted model on eval images", valued=True),
    )
    encrypted_limit: int | None = field(
        default=32, metadata=flag("eval images for --validate-encrypted (0 = all)")
    )
    progress: bool = field(
        default=True, metadata=flag("True/False: tqdm progress bars", valued=True)
    )
    unfamiliarity: str = field(
        default="pooled_mahalanobis",
        metadata=flag(f"unfamiliarity detector: {', '.join(DETECTORS)} or none"),
    )
    unfamiliarity_features: str = field(
        default="conv_laplacian",
        metadata=flag(
            f"what the detector reads: {', '.join(FEATURE_SETS)} (the conv sets: lenet only; "
            "other backbones read penultimate)"
        ),
    )
    unfamiliar_flag_rate: float = field(
        default=0.05,
        metadata=flag("share of the calibration split the detector's threshold flags, in (0, 0.5)"),
    )
    screening_sensitivity: float = field(
        default=0.90,
        metadata=flag(
            "operating point: sensitivity the decision threshold reaches on the calibration "
            "split (0 = threshold 0.5)"
        ),
    )
    bootstrap_resamples: int = field(
        default=1000, metadata=flag("bootstrap resamples for the eval figures' 95% intervals")
    )
    dp_epsilon: float = field(
        default=0.0,
        metadata=flag(
            "differential privacy: train with DP-SGD (Opacus) spending at most this epsilon "
            "(0 = no DP)"
        ),
    )
    dp_delta: float = field(default=1e-5, metadata=flag("DP delta (with --dp-epsilon)"))
    max_grad_norm: float = field(
        default=1.0, metadata=flag("DP per-example gradient clipping norm (with --dp-epsilon)")
    )
    dp_public_images: int = field(
        default=PUBLIC_IMAGES,
        metadata=flag(
            "DP: public generated images that set the frozen BatchNorm statistics and fit "
            "the unfamiliarity detector (never the private data)"
        ),
    )
    dp_public_pretrain_epochs: int = field(
        default=0,
        metadata=flag(
            "DP: first train on the public generated images for this many epochs without DP "
            "(they are public: no epsilon spent), then fine-tune with DP-SGD (0 = from scratch)"
        ),
    )
    mint: bool = field(
        default=False,
        metadata=flag(
            "after training, mint the checkpoint's passport on chain (python -m models.passport "
            "mint; chain and owner key from CRYPTO_DOCTOR_OCEAN_* / _PASSPORT_OWNER_KEY)"
        ),
    )

    def __post_init__(self) -> None:
        if self.source_dir_train is None or self.source_dir_eval is None:
            raise ValueError(
                "--source-dir-train and --source-dir-eval are required "
                f"(or {ENV_TRAIN_DIR}/{ENV_EVAL_DIR})"
            )
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {BACKBONES}, not {self.backbone!r}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        for name in ("image_size", "max_epochs", "batch_size", "lr", "num_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if self.unfamiliarity not in (*DETECTORS, "none"):
            raise ValueError(f"--unfamiliarity must be one of {DETECTORS} or none")
        if self.unfamiliarity_features not in FEATURE_SETS:
            raise ValueError(f"--unfamiliarity-features must be one of {FEATURE_SETS}")
        if self.unfamiliarity_features.startswith("conv") and self.backbone != "lenet":
            object.__setattr__(self, "unfamiliarity_features", "penultimate")
        if not 0.0 < self.unfamiliar_flag_rate < 0.5:
            raise ValueError("--unfamiliar-flag-rate must be in (0, 0.5)")
        if not 0.0 <= self.screening_sensitivity < 1.0:
            raise ValueError("--screening-sensitivity must be in [0, 1)")
        if self.bootstrap_resamples < 0:
            raise ValueError("--bootstrap-resamples must be >= 0")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"--augmentation must be one of {AUGMENTATIONS}")
        if not 0.0 <= self.calibration_fraction < 0.9:
            raise ValueError("--calibration-fraction must be in [0, 0.9)")
        for name in ("train_limit", "eval_limit", "encrypted_limit"):
            limit = getattr(self, name)
            if limit is not None and limit < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (0 = no limit)")
            if limit == 0:
                object.__setattr__(self, name, None)
        if self.dp_epsilon < 0:
            raise ValueError("--dp-epsilon must be >= 0 (0 = no differential privacy)")
        if self.dp_epsilon and self.dp_public_images < 8:
            raise ValueError("--dp-public-images must be >= 8")
        if self.dp_public_pretrain_epochs < 0:
            raise ValueError("--dp-public-pretrain-epochs must be >= 0")
        if self.dp_public_pretrain_epochs and not self.dp_epsilon:
            raise ValueError(
                "--dp-public-pretrain-epochs needs --dp-epsilon (it prepares DP fine-tuning)"
            )
        if self.teacher is not None:
            if not 0.0 < self.distill_weight <= 1.0:
                raise ValueError("--distill-weight must be in (0, 1]")
            if not self.distill_temperature > 0:
                raise ValueError("--distill-temperature must be positive")
            if self.dp_epsilon:
                raise ValueError(
                    "--teacher with --dp-epsilon: a teacher trained on the private data "
                    "would pass it on outside the DP budget"
                )
        self.dp_config()  # a DP budget must be well formed
        if self.training_run_out is None:
            object.__setattr__(self, "training_run_out", Path("models") / f"{self.backbone}.pth")
        self.architecture()  # the backbone/activation/size combination must be buildable

    @property
    def train_dir(self) -> Path:
        """``source_dir_train``, which ``__post_init__`` guarantees is set."""
        assert self.source_dir_train is not None
        return self.source_dir_train

    @property
    def eval_dir(self) -> Path:
        """``source_dir_eval``, which ``__post_init__`` guarantees is set."""
        assert self.source_dir_eval is not None
        return self.source_dir_eval

    @property
    def checkpoint_path(self) -> Path:
        """``training_run_out``, which ``__post_init__`` fills in from the backbone if unset."""
        assert self.training_run_out is not None
        return self.training_run_out

    def architecture(self) -> Architecture:
        """The network to train; raises ``ValueError`` for a combination that cannot be built."""
        base = default_architecture(self.backbone)
        return Architecture(
            backbone=self.backbone,
            image_size=self.image_size,
            activation=self.activation or base.activation,
            relu_stages=self.relu_stages,
        )

    def dp_config(self) -> DPConfig | None:
        """The DP budget, or None when ``--dp-epsilon`` is 0 (plain training)."""
        if not self.dp_epsilon:
            return None
        return DPConfig(self.dp_epsilon, self.dp_delta, self.max_grad_norm)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values, as the metrics and provenance files record them."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def parse_train_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> TrainSettings:
    """Settings from ``argv`` and the environment; bad values exit with argparse's usage message."""
    return parse_settings(
        TrainSettings,
        argv,
        env,
        prog="python -m training",
        description="Train, calibrate and evaluate a tumour classifier.",
    )
