"""One training run: data -> train -> calibrate -> evaluate -> checkpoint, metrics, plots, passport."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import save_checkpoint
from models.nets import build_model
from models.preprocessing import Preprocessing
from training.calibration import fit_temperature
from training.data import ImageFolder, fingerprint, stratified_split
from training.loop import LoopConfig, predict_logits, train
from training.metrics import classification_report
from training.plots import plot_curves, plot_reliability
from training.provenance import build_provenance, data_record, output_paths
from training.settings import TrainSettings

log = logging.getLogger(__name__)
ENCRYPTED_KEYS = (
    "images",
    "plaintext_accuracy",
    "encrypted_accuracy",
    "argmax_agreement_pct",
    "max_abs_logit_difference_error",
    "seconds_per_image",
)


def run_training(settings: TrainSettings, command: list[str] | None = None) -> dict:
    """Train per ``settings``; write checkpoint + companions; return the metrics dict."""
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
        seed=settings.seed,
        progress=settings.progress,
    )
    train_started = time.perf_counter()
    history = train(
        model,
        (train_set.images[keep], train_set.labels[keep]),
        (train_set.images[held], train_set.labels[held]),
        (eval_set.images, eval_set.labels),
        config,
    )
    train_seconds = time.perf_counter() - train_started

    # Temperature: fitted on the calibration split (never on eval); falls back to the
    # fit split only when --calibration-fraction is 0.
    calib_idx = held if len(held) else keep
    calib_logits = predict_logits(model, train_set.images[calib_idx]).numpy()
    calib_labels = train_set.labels[calib_idx].numpy()
    temperature = fit_temperature(calib_logits, calib_labels)
    eval_logits = predict_logits(model, eval_set.images).numpy()
    eval_labels = eval_set.labels.numpy()

    sha = save_checkpoint(paths["checkpoint"], model, arch, temperature)
    title = f"{arch.backbone} ({arch.activation}, {arch.image_size} px)"
    plot_curves(history.epochs, history.best_epoch, paths["curves"], title)
    plot_reliability(eval_logits, eval_labels, temperature, paths["reliability"], f"{title}: eval")

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
    metrics = {
        "backbone": arch.backbone,
        "architecture": arch.to_dict(),
        "checkpoint": str(paths["checkpoint"]),
        "checkpoint_sha256": sha,
        "temperature": temperature,
        "temperature_fitted_on": "calibration split held out of the training folder"
        if len(held)
        else "training split (no calibration split requested)",
        "eval": classification_report(eval_logits, eval_labels, temperature),
        "calibration_split": classification_report(calib_logits, calib_labels, temperature),
        "history": history.to_dict(),
        "data": {
            "train_dir": str(settings.train_dir),
            "eval_dir": str(settings.eval_dir),
            "train_count": len(keep),
            "calibration_count": len(held),
            "eval_count": len(eval_set),
        },
        "seconds": {"training": round(train_seconds, 2)},
        "settings": settings.to_dict(),
    }
    metrics["seconds"]["total"] = round(time.perf_counter() - started, 2)

    def write_records() -> None:
        _write_json(paths["metrics"], metrics)
        provenance = build_provenance(
            checkpoint_sha256=sha,
            checkpoint_bytes=paths["checkpoint"].stat().st_size,
            architecture=arch.to_dict(),
            temperature=temperature,
            train=train_data,
            evaluation=eval_data,
            metrics_summary=summary(metrics),
            settings=settings.to_dict(),
            command=command if command is not None else list(sys.argv),
            now=dt.datetime.now(dt.UTC),
        )
        _write_json(paths["provenance"], provenance)

    write_records()  # the trained model is on disk before the (slow, fallible) MPC check
    log_summary(metrics, paths)
    if settings.validate_encrypted:
        metrics["encrypted_validation"] = encrypted_validation(paths["checkpoint"], settings)
        metrics["seconds"]["total"] = round(time.perf_counter() - started, 2)
        write_records()
    return metrics


def encrypted_validation(checkpoint: Path, settings: TrainSettings) -> dict:
    """Run the lead's two-party check (imported lazily: it pulls in CrypTen)."""
    from training.encrypted_validation import validate_encrypted

    result = validate_encrypted(checkpoint, settings.eval_dir, limit=settings.encrypted_limit)
    log.info("encrypted validation (%s, two parties):", checkpoint.name)
    for key in ENCRYPTED_KEYS:
        if key in result:
            log.info("  %-31s %s", key, _fmt(result[key]))
    return result


def summary(metrics: dict) -> dict:
    """The headline figures copied into the provenance record."""
    ev = metrics["eval"]
    out = {
        key: ev[key]
        for key in ("count", "accuracy", "auc", "ece_before", "ece_after", "confusion_matrix")
    }
    out["temperature"] = metrics["temperature"]
    out["best_epoch"] = metrics["history"]["best_epoch"]
    out["epochs"] = len(metrics["history"]["epochs"])
    if "encrypted_validation" in metrics:
        enc = metrics["encrypted_validation"]
        out["encrypted_validation"] = {k: enc[k] for k in ENCRYPTED_KEYS if k in enc}
    return out


def log_summary(metrics: dict, paths: dict[str, Path]) -> None:
    ev = metrics["eval"]
    log.info(
        "eval (%d images): accuracy %.3f, AUC %.3f, ECE %.3f -> %.3f (T = %.3f), confusion %s",
        ev["count"], ev["accuracy"], ev["auc"], ev["ece_before"], ev["ece_after"],
        metrics["temperature"], ev["confusion_matrix"],
    )  # fmt: skip
    for name, path in paths.items():
        log.info("wrote %-11s %s", name, path)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _finite(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
