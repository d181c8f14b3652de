"""What the model owner and the hospitals say to each other: run settings and record keys.

Shared by ``client_app`` and ``server_app`` (federation venv) and by the CLI that builds the
run configuration (either venv); no Flower import here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from models.nets import Architecture, default_architecture
from training.data import AUGMENTATIONS as TRAINING_AUGMENTATIONS
from training.federated.aggregate import STRATEGIES
from training.loop import KEEP_EPOCH
from training.privacy import DPConfig

#: message types beyond Flower's ``train`` / ``evaluate``
DESCRIBE = "query.describe"
CALIBRATE = "evaluate.calibrate"
#: how each round's local learning rate follows from ``lr``
LR_SCHEDULES = ("cosine", "constant")
#: the local training's augmentations (central training's, or none: off)
AUGMENTATIONS = ("none", *TRAINING_AUGMENTATIONS)
#: node-config keys a hospital's SuperNode is started with
NODE_DATA_DIR = "data-dir"
NODE_SIMULATE = "simulate"


@dataclass(frozen=True)
class RunConfig:
    """The model owner's choices for one federated run (Flower's ``run_config``)."""

    backbone: str = "lenet"
    image_size: int = 64
    rounds: int = 10
    strategy: str = "fedavg"
    #: server momentum (FedAvgM, 0 = none): each round the global model moves by the
    #: aggregate plus this times the last round's step (weights only, not BatchNorm statistics)
    server_momentum: float = 0.0
    secagg: bool = False
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    #: ``cosine``: round r trains at lr * (1 + cos(pi (r - 1) / rounds)) / 2, so the global
    #: model settles in the last rounds as central training's cosine schedule does;
    #: ``constant``: every round at ``lr``. Each round's local epochs anneal within the round.
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-4
    augmentation: str = "robust"
    #: which local epoch a hospital returns: ``best`` (lowest loss on its calibration split,
    #: early stopping) or ``last``; DP training always returns the last (choosing by a private
    #: split's loss is outside the guarantee)
    keep_epoch: str = "best"
    seed: int = 0
    calibration_fraction: float = 0.2
    #: fewer valid updates than this in a round ends the run with an error
    min_hospitals: int = 2
    #: how long a round waits for replies before going on without the missing ones
    round_timeout_s: float = 300.0
    #: the model owner's side: where the outputs go, its eval folder, its hospital registry
    out: str = "models/federated-lenet.pth"
    eval_dir: str = ""
    registry: str = ""
    #: differential privacy at every hospital (0 = none): DP-SGD spending at most this epsilon
    #: over the whole run, each hospital's own accountant
    dp_epsilon: float = 0.0
    dp_delta: float = 1e-5
    max_grad_norm: float = 1.0
    #: the model owner's folder of public (generated) images for the frozen BatchNorm statistics
    dp_public_dir: str = ""
    #: the model owner first trains round 1's starting model this many epochs on the
    #: ``dp_public_dir`` images, without DP (public images cost no epsilon); 0 = random weights.
    #: Without ``dp_epsilon`` it gives the non-DP baseline the same start.
    dp_public_pretrain_epochs: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.secagg and self.strategy != "fedavg":
            raise ValueError(
                "SecAgg+ shows the model owner only the masked sum of the updates, so only "
                "FedAvg can aggregate it; FedMedian needs each hospital's update"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose from {LR_SCHEDULES}"
            )
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"unknown augmentation {self.augmentation!r}; choose from {AUGMENTATIONS}"
            )
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        if self.keep_epoch not in KEEP_EPOCH:
            raise ValueError(f"unknown keep_epoch {self.keep_epoch!r}; choose from {KEEP_EPOCH}")
        if self.rounds < 1 or self.local_epochs < 1 or self.min_hospitals < 1:
            raise ValueError("rounds, local_epochs and min_hospitals must be at least 1")
        if self.secagg and self.min_hospitals < 2:
            raise ValueError("SecAgg+ needs at least 2 hospitals per round")
        self.architecture()  # validates backbone / image size
        if self.dp_epsilon < 0:
            raise ValueError("dp_epsilon must be >= 0 (0 = no differential privacy)")
        self.dp_config()  # a DP budget must be well formed
        if self.dp_epsilon and not self.dp_public_dir:
            raise ValueError(
                "differential privacy needs --dp-public-dir: public images for the frozen "
                "BatchNorm statistics (statistics of the hospitals' data would leak)"
            )
        if self.dp_public_pretrain_epochs < 0:
            raise ValueError(
                f"dp_public_pretrain_epochs must be >= 0, got {self.dp_public_pretrain_epochs}"
            )
        if self.dp_public_pretrain_epochs and not self.dp_public_dir:
            raise ValueError(
                "--dp-public-pretrain-epochs needs --dp-public-dir: the public images the "
                "model owner pre-trains on"
            )

    def round_lr(self, round_number: int) -> float:
        """The learning rate a hospital's local training starts round ``round_number`` (1-based) at."""
        if self.lr_schedule == "constant":
            return self.lr
        done = min(max(round_number - 1, 0), self.rounds - 1)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * done / self.rounds))

    def dp_config(self) -> DPConfig | None:
        """Each hospital's DP budget for the whole run, or None (no DP)."""
        if not self.dp_epsilon:
            return None
        return DPConfig(self.dp_epsilon, self.dp_delta, self.max_grad_norm)

    def architecture(self) -> Architecture:
        base = default_architecture(self.backbone)
        return Architecture(self.backbone, self.image_size, base.activation)

    def to_flower(self) -> dict[str, Any]:
        """Flower run-config values (TOML scalars; dashes as Flower writes keys)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_flower(values: dict[str, Any]) -> RunConfig:
        known = {f.name: f.type for f in fields(RunConfig)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name in known:
                kwargs[name] = value
        cfg = RunConfig(**kwargs)
        # TOML gives ints for whole floats and vice versa: coerce to the declared types.
        return RunConfig(
            **{
                f.name: type(getattr(RunConfig(), f.name))(getattr(cfg, f.name))
                for f in fields(RunConfig)
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
