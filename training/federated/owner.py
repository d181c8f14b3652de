"""The model owner's bookkeeping for one federated run, free of Flower.

:class:`Federation` is told what each round brought (replies, errors, missing hospitals)
and decides: it checks every update, aggregates the accepted ones, keeps each update on
disk, evaluates the new global model on the owner's own eval set, and at the end writes the
checkpoint, metrics, plots and provenance. ``server_app`` only moves messages.
"""

from __future__ import annotations

import logging
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import save_checkpoint
from models.nets import build_model
from models.preprocessing import Preprocessing
from training.calibration import nll
from training.data import ImageFolder, fingerprint
from training.federated.aggregate import Update, aggregate, check_update, momentum_step
from training.federated.hospital import from_arrays, to_arrays, weight_mask
from training.federated.outputs import FederatedPaths, plot_rounds, save_arrays, utc_now
from training.federated.protocol import RunConfig
from training.loop import predict_logits
from training.metrics import classification_report
from training.plots import plot_reliability
from training.privacy import (
    ACCOUNTANT,
    ACCOUNTANT_NOTE,
    public_pretrain,
    public_pretrain_record,
    set_public_batchnorm,
)
from training.provenance import data_record, write_json

log = logging.getLogger("training.federated")


class FederationError(RuntimeError):
    """The run cannot go on (too few hospitals, no eval data); the message says why."""


@dataclass
class Hospital:
    """A hospital as the model owner knows it: a pseudonym and what it claimed."""

    node_id: int
    pseudonym: str
    claimed: dict[str, Any] = field(default_factory=dict)
    excluded: str | None = None  # why it takes no part (bad data, no answer)
    events: list[str] = field(default_factory=list)  # dropouts, rejected updates

    def record(self) -> dict[str, Any]:
        return {
            "pseudonym": self.pseudonym,
            "claimed_data": self.claimed,
            "status": "excluded" if self.excluded else "included",
            "excluded_because": self.excluded,
            "events": self.events,
        }


class Federation:
    def __init__(self, run: RunConfig, registry: dict[int, str]) -> None:
        self.run = run
        self.arch = run.architecture()
        self.paths = FederatedPaths.for_checkpoint(Path(run.out))
        torch.manual_seed(run.seed)
        self.model = build_model(self.arch)
        self.public_images = 0
        self.initialisation = f"random weights (seed {run.seed})"
        if run.dp_epsilon or run.dp_public_pretrain_epochs:
            public = ImageFolder(Path(run.dp_public_dir), Preprocessing(self.arch.image_size))
            self.public_images = len(public)
            if run.dp_public_pretrain_epochs:  # public images only: no hospital's data, no ε
                public_pretrain(
                    self.model, (public.images, public.labels), run.dp_public_pretrain_epochs,
                    run.seed,
                )  # fmt: skip
                self.initialisation = (
                    public_pretrain_record(
                        len(public),
                        run.dp_public_pretrain_epochs,
                        f"public images ({run.dp_public_dir})",
                    )
                    + "; by the model owner before round 1"
                )
            if run.dp_epsilon:  # BatchNorm statistics from public images, frozen at the hospitals
                set_public_batchnorm(self.model, public.images)
        self.arrays = to_arrays(self.model)
        self.is_weight = weight_mask(self.arch)
        self.last_step: list[np.ndarray] | None = None  # server momentum's memory
        if not run.eval_dir:
            raise FederationError("the model owner needs an eval folder (--eval-dir)")
        self.eval_set = ImageFolder(Path(run.eval_dir), Preprocessing(self.arch.image_size))
        self.registry = registry
        self.hospitals: dict[int, Hospital] = {}
        self.rounds: list[dict[str, Any]] = []
        self.update_hashes: dict[str, str] = {}
        shutil.rmtree(self.paths.updates, ignore_errors=True)  # an earlier run's archive
        if not run.secagg:  # the starting point of every coalition's replay (contribution)
            digest = save_arrays(self.paths.updates / "round-000" / "global.npz", self.arrays)
            self.update_hashes["round-000/global.npz"] = digest
        self.started = time.perf_counter()
        self.temperature = 1.0
        self.calibration: dict[str, Any] = {}

    # ------------------------------------------------------------------ hospitals
    def hospital(self, node_id: int) -> Hospital:
        if node_id not in self.hospitals:
            name = self.registry.get(node_id, f"node-{node_id}")
            self.hospitals[node_id] = Hospital(node_id, name)
        return self.hospitals[node_id]

    def described(self, node_id: int, record: dict[str, Any]) -> None:
        hospital = self.hospital(node_id)
        if "error" in record:
            hospital.excluded = f"its data were refused at the node: {record['error']}"
            log.warning("hospital %s left out: %s", hospital.pseudonym, hospital.excluded)
        else:
            hospital.claimed = record
            log.info(
                "hospital %s: %s images (claimed), data sha256 %s",
                hospital.pseudonym, record.get("size"), str(record.get("fingerprint_sha256"))[:16],
            )  # fmt: skip

    def silent(self, node_id: int, what: str) -> None:
        hospital = self.hospital(node_id)
        hospital.excluded = f"no answer to {what}"
        log.warning("hospital %s left out: %s", hospital.pseudonym, hospital.excluded)

    def active(self) -> list[int]:
        return sorted(n for n, h in self.hospitals.items() if h.excluded is None)

    # ------------------------------------------------------------------ rounds
    def close_round(
        self,
        number: int,
        replies: Sequence[Update],
        node_of: dict[str, int],
        missing: dict[int, str],
        seconds: float,
        traffic: dict[str, dict[str, int]],
    ) -> None:
        """Check, keep, aggregate and evaluate one round's updates (plain, not SecAgg+)."""
        accepted: list[Update] = []
        rejected: dict[str, str] = {}
        for update in replies:
            reason = check_update(self.arrays, update)
            digest = save_arrays(
                self.paths.updates / f"round-{number:03d}" / f"{update.hospital}.npz",
                update.arrays if reason is None else [],
                examples=update.examples,
                rejected=reason or "",
                **{f"metric_{k}": v for k, v in update.metrics.items()},
            )
            self.update_hashes[f"round-{number:03d}/{update.hospital}.npz"] = digest
            if reason is None:
                accepted.append(update)
            else:
                rejected[update.hospital] = reason
                self.hospital(node_of[update.hospital]).events.append(
                    f"round {number}: update rejected ({reason})"
                )
                log.warning("round %d: update of %s rejected: %s", number, update.hospital, reason)
        for node_id, why in missing.items():
            self.hospital(node_id).events.append(f"round {number}: dropped out ({why})")
            log.warning(
                "round %d: %s dropped out: %s", number, self.hospital(node_id).pseudonym, why
            )
        if len(accepted) < self.run.min_hospitals:
            raise FederationError(
                f"round {number}: {len(accepted)} valid update(s), fewer than the minimum "
                f"{self.run.min_hospitals} (rejected: {rejected or 'none'}; "
                f"missing: {[self.hospital(n).pseudonym for n in missing] or 'none'})"
            )
        step = self.apply(aggregate(self.run.strategy, accepted))
        digest = save_arrays(  # the step the global model took (with momentum, if on)
            self.paths.updates / f"round-{number:03d}" / "aggregate.npz", step, round=number
        )
        self.update_hashes[f"round-{number:03d}/aggregate.npz"] = digest
        self.rounds.append(
            {
                "round": number,
                "strategy": self.run.strategy,
                "hospitals": {u.hospital: {"examples": u.examples, **u.metrics} for u in accepted},
                "rejected": rejected,
                "dropped_out": [self.hospital(n).pseudonym for n in missing],
                "seconds": round(seconds, 3),
                "payload_bytes": traffic,
                "eval": self.evaluate(),
            }
        )
        log.info("round %d: eval %s", number, _brief(self.rounds[-1]["eval"]))

    def close_masked_round(
        self,
        number: int,
        change: Sequence[np.ndarray],
        weights: dict[str, int],
        missing: dict[int, str],
        seconds: float,
        traffic: dict[str, dict[str, int]],
    ) -> None:
        """A SecAgg+ round: only the masked, example-weighted mean change is known."""
        for node_id, why in missing.items():
            self.hospital(node_id).events.append(f"round {number}: dropped out ({why})")
        if any(not np.all(np.isfinite(a)) for a in change):
            raise FederationError(f"round {number}: the securely aggregated change is not finite")
        self.apply(
            [np.asarray(c).astype(a.dtype) for c, a in zip(change, self.arrays, strict=True)]
        )
        self.rounds.append(
            {
                "round": number,
                "strategy": "fedavg+secagg",
                "hospitals": {h: {"examples": w} for h, w in weights.items()},
                "rejected": {},
                "dropped_out": [self.hospital(n).pseudonym for n in missing],
                "seconds": round(seconds, 3),
                "payload_bytes": traffic,
                "eval": self.evaluate(),
            }
        )
        log.info("round %d: eval %s", number, _brief(self.rounds[-1]["eval"]))

    def apply(self, change: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Move the global model by the round's aggregate ``change`` (plus server momentum);
        return the step taken."""
        step = momentum_step(change, self.last_step, self.run.server_momentum, self.is_weight)
        self.last_step = step
        self.arrays = [
            (a + c).astype(a.dtype) if np.issubdtype(a.dtype, np.floating) else a + c
            for a, c in zip(self.arrays, step, strict=True)
        ]
        self.model = from_arrays(self.arch, self.arrays)
        return step

    def evaluate(self) -> dict[str, float]:
        logits = predict_logits(self.model, self.eval_set.images).double().numpy()
        labels = self.eval_set.labels.numpy()
        report = classification_report(logits, labels, 1.0)
        return {
            "auc": report.auc,
            "accuracy": report.accuracy,
            "sensitivity": report.sensitivity,
            "specificity": report.specificity,
            "nll": nll(logits, labels),
        }

    # ------------------------------------------------------------------ the end
    def calibrated(
        self, temperature: float, pooled_nll: float, pooled_ece: float, counts: dict[str, int]
    ) -> None:
        self.temperature = temperature
        self.calibration = {
            "method": "grid search of the pooled NLL over the hospitals' calibration splits",
            "temperature": temperature,
            "pooled_nll": pooled_nll,
            "pooled_ece": pooled_ece,
            "calibration_images_per_hospital": counts,
        }
        log.info(
            "temperature %.3f (pooled NLL %.4f, pooled ECE %.4f)",
            temperature,
            pooled_nll,
            pooled_ece,
        )

    def finish(self, command: Sequence[str]) -> dict[str, Any]:
        """Write checkpoint, metrics, plots and provenance; return the metrics record."""
        out = self.paths.outputs
        sha = save_checkpoint(out.checkpoint, self.model, self.arch, self.temperature)
        logits = predict_logits(self.model, self.eval_set.images).double().numpy()
        labels = self.eval_set.labels.numpy()
        report = classification_report(logits, labels, self.temperature)
        title = f"federated {self.arch.backbone} ({self.run.strategy}{', SecAgg+' if self.run.secagg else ''})"
        plot_rounds(self.rounds, out.curves, title)
        plot_reliability(logits, labels, self.temperature, out.reliability, f"{title}: eval")
        metrics = {
            "backbone": self.arch.backbone,
            "architecture": self.arch.to_dict(),
            "checkpoint": str(out.checkpoint),
            "checkpoint_sha256": sha,
            "temperature": self.temperature,
            "temperature_fitted_on": "the hospitals' calibration splits (federated, pooled NLL)",
            "eval": report.to_dict(),
            "calibration": self.calibration,
            "rounds": self.rounds,
            "seconds": {"total": round(time.perf_counter() - self.started, 2)},
            "run": self.run.to_dict(),
        }
        write_json(out.metrics, metrics)
        write_json(out.provenance, self.provenance(sha, report.to_dict(), command))
        for name, path in out.named():
            log.info("wrote %-11s %s", name, path)
        return metrics

    def provenance(
        self, sha: str, report: dict[str, Any], command: Sequence[str]
    ) -> dict[str, Any]:
        eval_dir = Path(self.run.eval_dir)
        return {
            "schema": "crypto-doctor/model-provenance/1",
            "checkpoint_sha256": sha,
            "checkpoint_bytes": self.paths.outputs.checkpoint.stat().st_size,
            "backbone": self.arch.backbone,
            "architecture": self.arch.to_dict(),
            "temperature": self.temperature,
            "trained_at_utc": utc_now(),
            "training": {
                "type": "federated",
                "framework": "flower 1.42 (deployment mode: SuperLink, SuperNodes)",
                "strategy": self.run.strategy,
                "server_momentum": self.run.server_momentum,
                "secure_aggregation": "SecAgg+" if self.run.secagg else None,
                "rounds": self.run.rounds,
                "local_epochs": self.run.local_epochs,
                "initialisation": self.initialisation,
                "min_hospitals_per_round": self.run.min_hospitals,
                "round_timeout_s": self.run.round_timeout_s,
            },
            "hospitals": [h.record() for h in self.hospitals.values()],
            **self.privacy_record(),
            "hospital_data_note": "sizes and content hashes are as claimed by each hospital; "
            "the model owner cannot verify them",
            "training_data": None,
            "eval_data": data_record(
                eval_dir,
                fingerprint(self.eval_set.root, self.eval_set.samples),
                self.eval_set.class_counts(),
            ),
            "calibration": self.calibration,
            "metrics": {
                "eval": report,
                "per_round": [{"round": r["round"], **r["eval"]} for r in self.rounds],
            },
            "updates": {
                "dir": str(self.paths.updates) if self.update_hashes else None,
                "sha256": self.update_hashes,
                "note": None
                if self.update_hashes
                else "SecAgg+: no hospital's update was ever seen",
            },
            "settings": self.run.to_dict(),
            "command": list(command),
            "software": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "argv0": sys.argv[0] if sys.argv else "",
            },
        }

    def privacy_record(self) -> dict[str, Any]:
        """``differential_privacy``: the run's budget and each hospital's spending as it
        last reported it (its own accountant; the owner cannot check it)."""
        if not self.run.dp_epsilon:
            return {}
        per_hospital: dict[str, dict[str, float]] = {}
        for record in self.rounds:
            for name, figures in record["hospitals"].items():
                dp = {k.removeprefix("dp_"): v for k, v in figures.items() if k.startswith("dp_")}
                if dp:
                    per_hospital[name] = {"round": record["round"], **dp}
        return {
            "differential_privacy": {
                "where": "DP-SGD at each hospital (local training), each with its own accountant "
                "kept across rounds in its node's run state",
                "target_epsilon": self.run.dp_epsilon,
                "delta": self.run.dp_delta,
                "max_grad_norm": self.run.max_grad_norm,
                "accountant": ACCOUNTANT,
                "accountant_note": ACCOUNTANT_NOTE,
                "sampling": "poisson",
                "batchnorm": f"frozen: running statistics from {self.public_images} public "
                f"images ({self.run.dp_public_dir}), set by the model owner before round 1",
                "initialisation": self.initialisation,
                "per_hospital": per_hospital,
                "per_hospital_note": "epsilon as each hospital's accountant reported it with its "
                "last update (under SecAgg+ the reports do not reach the model owner)",
                "not_covered": "the temperature (hospitals' calibration NLL sums) is outside "
                "the epsilon",
            }
        }


def _brief(ev: dict[str, float]) -> str:
    return f"AUC {ev['auc']:.3f}, accuracy {ev['accuracy']:.3f}, NLL {ev['nll']:.3f}"
