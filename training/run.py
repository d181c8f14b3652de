"""One training run: data -> train -> calibrate -> evaluate -> checkpoint, metrics, plots, passport."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.nets import Architecture, build_model
from models.preprocessing import Preprocessing
from training.calibration import fit_temperature
from training.data import ImageFolder, fingerprint, stratified_split
from training.loop import History, LoopConfig, predict_logits, train
from training.metrics import ClassificationReport, classification_report
from training.ood import fit_unfamiliarity, unfamiliarity_record
from training.plots import plot_curves, plot_reliability
from training.privacy import (
    DPConfig,
    dp_train,
    generated_public_source,
    plan,
    public_batchnorm_record,
    public_images,
    public_pretrain,
    public_pretrain_record,
    set_public_batchnorm,
)
from training.provenance import (
    OutputPaths,
    build_provenance,
    data_record,
    output_paths,
    write_json,
)
from training.screening import bootstrap, choose_threshold, intervals_to_dict, screening_figures
from training.settings import TrainSettings

if TYPE_CHECKING:  # imported when needed: the two-party check is optional
    from training.encrypted_validation import EncryptedValidation

log = logging.getLogger(__name__)
#: What the model is not: copied into every provenance record (and so into its passport).
LIMITS = (
    "trained and evaluated on generated data only (training.synthetic: MNI152 template "
    "anatomy, synthetic lesions), never on patients' scans; figures on real scans are unknown",
    "axial brain-MRI slices only: other orientations, sequences and body parts are outside "
    "its training and are meant to be flagged unfamiliar, not diagnosed",
    "a second-opinion screen, not a diagnosis: every case goes to a panel of doctors",
)
ENCRYPTED_KEYS = (
    "images",
    "plaintext_accuracy",
    "encrypted_accuracy",
    "argmax_agreement_pct",
    "max_abs_logit_difference_error",
    "seconds_per_image",
    "unfamiliar_agreement_pct",
)


@dataclass(frozen=True)
class TrainingRun:
    """What one run produced; the checkpoint and its companions are on disk at ``paths``."""

    settings: TrainSettings
    architecture: Architecture
    paths: OutputPaths
    checkpoint_sha256: str
    temperature: float
    #: False when --calibration-fraction 0 left no split to fit the temperature on.
    temperature_on_held_out: bool
    eval: ClassificationReport
    calibration_split: ClassificationReport
    history: History
    train_count: int  # images the gradient steps saw
    calibration_count: int
    eval_count: int
    training_seconds: float
    total_seconds: float
    encrypted_validation: EncryptedValidation | None = None
    #: operating point, eval figures with bootstrap intervals, unfamiliarity detector
    screening: dict[str, Any] | None = None
    #: --dp-epsilon: the accountant's epsilon, delta, clipping, noise, accountant, BatchNorm
    differential_privacy: dict[str, Any] | None = None

    def metrics_record(self) -> dict[str, Any]:
        """The ``<stem>.metrics.json`` payload."""
        record: dict[str, Any] = {
            "backbone": self.architecture.backbone,
            "architecture": self.architecture.to_dict(),
            "checkpoint": str(self.paths.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "temperature": self.temperature,
            "temperature_fitted_on": "calibration split held out of the training folder"
            if self.temperature_on_held_out
            else "training split (no calibration split requested)",
            "eval": self.eval.to_dict(),
            "calibration_split": self.calibration_split.to_dict(),
            "history": self.history.to_dict(),
            "data": {
                "train_dir": str(self.settings.train_dir),
                "eval_dir": str(self.settings.eval_dir),
                "train_count": self.train_count,
                "calibration_count": self.calibration_count,
                "eval_count": self.eval_count,
            },
            "seconds": {
                "training": round(self.training_seconds, 2),
                "total": round(self.total_seconds, 2),
            },
            "settings": self.settings.to_dict(),
        }
        if self.screening is not None:
            record["screening"] = self.screening
        if self.encrypted_validation is not None:
            record["encrypted_validation"] = self.encrypted_validation.to_dict()
        if self.differential_privacy is not None:
            record["differential_privacy"] = self.differential_privacy
        return record

    def summary(self) -> dict[str, Any]:
        """The headline figures copied into the provenance record."""
        ev = self.eval
        out: dict[str, Any] = {
            "count": ev.count,
            "accuracy": ev.accuracy,
            "auc": ev.auc,
            "ece_before": ev.ece_before,
            "ece_after": ev.ece_after,
            "confusion_matrix": ev.confusion_matrix,
            "temperature": self.temperature,
            "best_epoch": self.history.best_epoch,
            "epochs": len(self.history.epochs),
        }
        if self.screening is not None:
            out["operating_point"] = self.screening["operating_point"]
            out["eval_at_operating_point"] = self.screening["eval"]
            if "unfamiliarity" in self.screening:
                out["unfamiliarity"] = self.screening["unfamiliarity"]
        out["limits"] = LIMITS
        if self.encrypted_validation is not None:
            enc = self.encrypted_validation.to_dict()
            out["encrypted_validation"] = {k: enc[k] for k in ENCRYPTED_KEYS}
        return out


def run_training(settings: TrainSettings, command: list[str] | None = None) -> TrainingRun:
    """Train per ``settings``; write checkpoint + companions; return what the run produced."""
    started = time.perf_counter()
    torch.set_num_threads(settings.num_threads)
    torch.manual_seed(settings.seed)
    arch = settings.architecture()
    paths = output_paths(settings.checkpoint_path)
    preprocessing = Preprocessing(arch.image_size)

    train_set = ImageFolder(settings.train_dir, preprocessing, settings.train_limit)
    eval_set = ImageFolder(settings.eval_dir, preprocessing, settings.eval_limit)
    keep, held = stratified_split(train_set.labels, settings.calibration_fraction, settings.seed)
    log.info(
        "data: %d train (%d fit, %d calibration) from %s, %d eval from %s",
        len(train_set), len(keep), len(held), settings.train_dir,
        len(eval_set), settings.eval_dir,
    )  # fmt: skip

    model = build_model(arch)
    config = LoopConfig(
        max_epochs=settings.max_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        augment=settings.augment,
        augmentation=settings.augmentation,
        seed=settings.seed,
        progress=settings.progress,
        distill_weight=settings.distill_weight,
        distill_temperature=settings.distill_temperature,
    )
    teacher = None
    if settings.teacher is not None:
        taught_by = load_checkpoint(settings.teacher)
        if taught_by.architecture.image_size != arch.image_size:
            raise SystemExit(
                f"--teacher sees {taught_by.architecture.image_size} px images, the model "
                f"{arch.image_size} px: train the teacher at the same size"
            )
        teacher = taught_by.model()
        log.info("distilling from %s (%s)", settings.teacher, taught_by.architecture.backbone)
    train_started = time.perf_counter()
    dp = settings.dp_config()
    dp_record: dict[str, Any] | None = None
    public: tuple[torch.Tensor, torch.Tensor] | None = None
    if dp is None:
        history = train(
            model,
            (train_set.images[keep], train_set.labels[keep]),
            (train_set.images[held], train_set.labels[held]),
            (eval_set.images, eval_set.labels),
            config,
            teacher,
        )
    else:
        history, dp_record, public = train_private(model, arch, settings, dp, config, (
            (train_set.images[keep], train_set.labels[keep]),
            (train_set.images[held], train_set.labels[held]),
            (eval_set.images, eval_set.labels),
        ))  # fmt: skip
    train_seconds = time.perf_counter() - train_started

    # Temperature: fitted on the calibration split (never on eval); falls back to the
    # fit split only when --calibration-fraction is 0.
    calib_idx = held if len(held) else keep
    calib_logits = predict_logits(model, train_set.images[calib_idx]).numpy()
    calib_labels = train_set.labels[calib_idx].numpy()
    temperature = fit_temperature(calib_logits, calib_labels)
    eval_logits = predict_logits(model, eval_set.images).numpy()
    eval_labels = eval_set.labels.numpy()

    calib_labels_t = train_set.labels[calib_idx]
    detector = None
    if settings.unfamiliarity != "none":
        # Under DP the detector's statistics would leak the private images: public ones instead.
        half = len(public[0]) // 2 if public is not None else 0
        detector = fit_unfamiliarity(
            model, arch, temperature,
            (public[0][:half], public[1][:half]) if public is not None
            else (train_set.images[keep], train_set.labels[keep]),
            public[0][half:] if public is not None else train_set.images[calib_idx],
            method=settings.unfamiliarity, features=settings.unfamiliarity_features,
            flag_rate=settings.unfamiliar_flag_rate,
        )  # fmt: skip
    calib_p = _p_tumor(calib_logits, temperature)
    eval_p = _p_tumor(eval_logits, temperature)
    threshold = 0.5
    if settings.screening_sensitivity > 0:
        threshold = choose_threshold(
            calib_p, calib_labels_t.numpy(), settings.screening_sensitivity
        )
    screening = screening_record(
        settings, threshold, (calib_p, calib_labels), (eval_p, eval_labels)
    )
    if detector is not None:
        screening["unfamiliarity"] = unfamiliarity_record(
            detector, model, arch, temperature, train_set.images[calib_idx], eval_set.images
        )

    sha = save_checkpoint(
        paths.checkpoint, model, arch, temperature,
        detector=detector, decision_threshold=threshold,
    )  # fmt: skip
    title = f"{arch.backbone} ({arch.activation}, {arch.image_size} px)"
    plot_curves(history.epochs, history.best_epoch, paths.curves, title)
    plot_reliability(eval_logits, eval_labels, temperature, paths.reliability, f"{title}: eval")

    train_data = data_record(
        settings.train_dir,
        fingerprint(train_set.root, train_set.samples),
        train_set.class_counts(),
    )
    eval_data = data_record(
        settings.eval_dir,
        fingerprint(eval_set.root, eval_set.samples),
        eval_set.class_counts(),
    )
    run = TrainingRun(
        settings=settings,
        architecture=arch,
        paths=paths,
        checkpoint_sha256=sha,
        temperature=temperature,
        temperature_on_held_out=bool(len(held)),
        eval=classification_report(eval_logits, eval_labels, temperature),
        calibration_split=classification_report(calib_logits, calib_labels, temperature),
        history=history,
        train_count=len(keep),
        calibration_count=len(held),
        eval_count=len(eval_set),
        training_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        screening=screening,
        differential_privacy=dp_record,
    )

    def write_records(run: TrainingRun) -> None:
        write_json(paths.metrics, run.metrics_record())
        provenance = build_provenance(
            checkpoint_sha256=sha,
            checkpoint_bytes=paths.checkpoint.stat().st_size,
            architecture=arch.to_dict(),
            temperature=temperature,
            train=train_data,
            evaluation=eval_data,
            metrics_summary=run.summary(),
            settings=settings.to_dict(),
            command=command if command is not None else list(sys.argv),
            now=dt.datetime.now(dt.UTC),
        )
        if run.differential_privacy is not None:
            provenance["differential_privacy"] = run.differential_privacy
        write_json(paths.provenance, provenance)

    write_records(run)  # the trained model is on disk before the (slow, fallible) MPC check
    log_summary(run)
    if settings.validate_encrypted:
        run = replace(
            run,
            encrypted_validation=encrypted_validation(paths.checkpoint, settings),
            total_seconds=time.perf_counter() - started,
        )
        write_records(run)
    return run


def train_private(
    model: torch.nn.Module,
    arch: Architecture,
    settings: TrainSettings,
    dp: DPConfig,
    config: LoopConfig,
    data: tuple[tuple[torch.Tensor, torch.Tensor], ...],
) -> tuple[History, dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
    """DP-SGD with BatchNorm statistics from public generated images; returns the history,
    the provenance's ``differential_privacy`` record and the public images."""
    fit, calibration, evaluation = data
    # Refuse an impossible budget before anything else is spent on the run.
    dp_plan = plan(
        dp, dataset_size=len(fit[1]), batch_size=config.batch_size, epochs=config.max_epochs
    )
    public = public_images(arch, settings.dp_public_images, settings.seed)
    if settings.dp_public_pretrain_epochs:
        public_pretrain(model, public, settings.dp_public_pretrain_epochs, settings.seed)
    set_public_batchnorm(model, public[0])
    result = dp_train(model, fit, calibration, evaluation, config, dp, dp_plan=dp_plan)
    record = result.record()
    record["batchnorm"] = public_batchnorm_record(settings.dp_public_images, settings.seed)
    if settings.dp_public_pretrain_epochs:
        record["initialisation"] = (
            public_pretrain_record(
                settings.dp_public_images,
                settings.dp_public_pretrain_epochs,
                generated_public_source(settings.seed),
            )
            + "; then fine-tuned with DP-SGD: epsilon covers the private images"
        )
    record["unfamiliarity_detector"] = "fitted on the public generated images"
    record["not_covered"] = (
        "the temperature and the decision threshold (two scalars fitted on the private "
        "calibration split) are outside the epsilon; the weights and BatchNorm are inside"
    )
    log.info(
        "differential privacy: epsilon %.3f (target %.3f, delta %g), noise multiplier %.3f, "
        "clipping %.3g, %d steps, %s accountant",
        result.epsilon, dp.epsilon, dp.delta, result.plan.noise_multiplier,
        dp.max_grad_norm, result.steps_taken, record["accountant"],
    )  # fmt: skip
    return result.history, record, public


def encrypted_validation(checkpoint: Path, settings: TrainSettings) -> EncryptedValidation:
    """Run the lead's two-party check (imported here: only this option needs it)."""
    from training.encrypted_validation import validate_encrypted

    result = validate_encrypted(checkpoint, settings.eval_dir, limit=settings.encrypted_limit)
    log.info("encrypted validation (%s, two parties):", checkpoint.name)
    figures = result.to_dict()
    for key in ENCRYPTED_KEYS:
        log.info("  %-31s %s", key, _fmt(figures[key]))
    return result


def log_summary(run: TrainingRun) -> None:
    ev = run.eval
    log.info(
        "eval (%d images): accuracy %.3f, AUC %.3f, ECE %.3f -> %.3f (T = %.3f), confusion %s",
        ev.count, ev.accuracy, ev.auc, ev.ece_before, ev.ece_after,
        run.temperature, ev.confusion_matrix,
    )  # fmt: skip
    for name, path in run.paths.named():
        log.info("wrote %-11s %s", name, path)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _p_tumor(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated P(tumor) from two-column logits."""
    d = (logits[:, 1] - logits[:, 0]) / temperature
    return np.asarray(1.0 / (1.0 + np.exp(-d)), dtype=np.float64)


def screening_record(
    settings: TrainSettings,
    threshold: float,
    calibration: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The operating point, chosen on calibration, and eval figures with bootstrap intervals."""
    target = settings.screening_sensitivity
    return {
        "operating_point": {
            "decision_threshold": threshold,
            "rule": "label tumor when calibrated P(tumor) >= decision_threshold",
            "chosen_on": "calibration split" if target > 0 else "default (0.5)",
            "target": f"sensitivity >= {target:.2f} on the calibration split"
            if target > 0
            else "none",
        },
        "calibration": screening_figures(*calibration, threshold),
        "eval": intervals_to_dict(
            bootstrap(
                *evaluation, threshold, resamples=settings.bootstrap_resamples, seed=settings.seed
            )
        )
        if settings.bootstrap_resamples
        else screening_figures(*evaluation, threshold),
        "eval_at_threshold_0.5": screening_figures(*evaluation, 0.5),
        "bootstrap": {"resamples": settings.bootstrap_resamples, "level": 0.95, "stratified": True},
    }
