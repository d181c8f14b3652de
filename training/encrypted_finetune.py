"""Encrypted fine-tuning on settled cases: a DP candidate model, and the gate that judges it.

    python -m training.encrypted_finetune --checkpoint models/lenet.pth --cases-dir CASES \\
        --owner-dir data/seed/train --eval-dir data/seed/eval --out runs/finetune/lenet.pth \\
        [--train-layers fc3 --epochs 4 --batch-size 8 --lr 0.2 --dp-epsilon 3 --dp-delta 1e-5
         --max-grad-norm 1 --max-auc-drop 0.002 --max-ece-increase 0.02]

Who reads what. Party 0 (a spawned process) reads only ``--cases-dir``: the settled cases'
images under ``yes/`` and ``no/`` as the doctors decided. Party 1 (another) reads only
``--checkpoint``. They run DP-SGD steps under MPC (``models.encrypted_training``): party 0
Poisson-samples each step's cases and tells party 1 their labels (public by design); every
image's gradient is clipped on shares and party 0's noise is added before the one opening,
of the noisy batch gradient, to party 1. Party 1 hands the fine-tuned weights to this process,
the model owner's, which never reads the cases. Here, in plaintext and on the owner's own
data only:

* the candidate gets its temperature, unfamiliarity detector and screening threshold again,
  from ``--owner-dir`` (its fit and calibration split, as ``python -m training`` does): the
  fine-tuned features moved, so the parent's detector no longer describes them;
* the gate compares it with the parent on ``--eval-dir``: eval AUC must not fall (the paired
  bootstrap's 95 % interval of the change must reach 0, and the change must be at least
  ``-max-auc-drop``, default 0.002) and ECE must not rise by more than
  ``--max-ece-increase`` (default 0.02).

The candidate is written to ``--out`` (with ``.provenance.json``: the parent's sha256, how
many cases taught it, the DP budget spent, the gate's figures and verdict) whether promoted
or refused; ``--checkpoint`` is never written. Exit status 0: promoted; 3: refused (the
reasons are printed and recorded); 2: bad arguments or a budget that allows no step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import secrets
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from models.encrypted import fold, unfold_lenet
from models.mpc import run_parties
from models.nets import Architecture
from models.preprocessing import Preprocessing
from models.unfamiliarity import Detector
from training.calibration import expected_calibration_error, fit_temperature, softmax
from training.compare import PairedAUC, paired_bootstrap_auc
from training.data import ImageFolder, list_samples, stratified_split
from training.loop import predict_logits
from training.ood import fit_unfamiliarity
from training.privacy import DPConfig, PrivacyBudgetError, epsilon_spent, plan
from training.provenance import write_json
from training.screening import choose_threshold

REFUSED = 3


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show on the owner's eval set to replace its parent: AUC did not
    fall (the paired 95 % interval of the change reaches 0, and the change is at least
    ``-max_auc_drop``) and ECE rose by at most ``max_ece_increase``."""

    max_auc_drop: float = 0.002
    max_ece_increase: float = 0.02


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reasons: tuple[str, ...]
    auc: dict[str, float | int]
    ece_parent: float
    ece_candidate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    policy: GatePolicy,
    auc: PairedAUC,
    ece_parent: float,
    ece_candidate: float,
    *,
    detector_lost: bool = False,
    finite: bool = True,
) -> Verdict:
    """Promote only when AUC did not fall more than allowed and ECE stayed within bound."""
    reasons = [] if finite else ["the candidate's outputs on eval are not all finite"]
    change = (
        f"({auc.auc_a:.4f} -> {auc.auc_b:.4f}; 95 % CI of the change "
        f"[{auc.ci_low:+.4f}, {auc.ci_high:+.4f}])"
    )
    if auc.difference < -policy.max_auc_drop:
        reasons.append(
            f"eval AUC fell by {-auc.difference:.4f} {change}, more than the "
            f"{policy.max_auc_drop:g} allowed"
        )
    elif auc.ci_high < 0:
        reasons.append(f"eval AUC fell, and the fall is beyond chance {change}")
    if ece_candidate > ece_parent + policy.max_ece_increase:
        reasons.append(
            f"ECE rose from {ece_parent:.4f} to {ece_candidate:.4f}, more than the "
            f"{policy.max_ece_increase:g} allowed"
        )
    if detector_lost:
        reasons.append("the parent flags unfamiliar images and the candidate could not")
    return Verdict(not reasons, tuple(reasons), auc.to_dict(), ece_parent, ece_candidate)


# ------------------------------------------------------------------------------ the parties


def trainable_names(arch: Architecture, layers: list[str]) -> set[str]:
    """The folded parameters of ``layers`` (e.g. ``["fc2", "fc3"]``); unknown layers refused."""
    from models.encrypted import parameter_shapes

    names = list(parameter_shapes(arch))
    known = {name.split(".")[0] for name in names}
    unknown = set(layers) - known
    if unknown:
        raise ValueError(
            f"no layer {sorted(unknown)} in {arch.backbone}; choose from {sorted(known)}"
        )
    return {name for name in names if name.split(".")[0] in layers}


def _party(
    rank: int,
    checkpoint_path: str,
    cases_dir: str,
    steps: int,
    rate: float,
    lr: float,
    clip: float,
    noise_multiplier: float,
    layers: list[str] | None,
) -> dict[str, Any] | None:
    from models.crypten_compat import load_crypten
    from models.encrypted_training import DPStep, encrypted_step

    crypten = load_crypten()
    comm = crypten.communicator.get()
    params = arch = None
    if rank == 1:
        checkpoint = load_checkpoint(checkpoint_path)
        arch = checkpoint.architecture
        params = fold(checkpoint.model(), arch, checkpoint.temperature)
    arch = Architecture(**comm.broadcast_obj(None if arch is None else arch.to_dict(), 1))
    images = labels = None
    sampler = torch.Generator().manual_seed(secrets.randbits(63))
    if rank == 0:
        cases = ImageFolder(Path(cases_dir), Preprocessing(arch.image_size))
        images, labels = cases.images, cases.labels.float()
    count = comm.broadcast_obj(None if labels is None else len(labels), 0)
    dp = DPStep(clip, noise_multiplier)
    trainable = None if layers is None else trainable_names(arch, layers)
    taken = 0
    for _ in range(steps):
        batch_images = drawn = None
        if images is not None and labels is not None:  # party 0: Poisson sampling
            picked = torch.nonzero(torch.rand(count, generator=sampler) < rate).flatten()
            batch_images, drawn = images[picked], labels[picked].tolist()
        batch_labels = comm.broadcast_obj(drawn, 0)
        if not batch_labels:
            continue  # an empty draw: nothing to open (the accountant still counts the step)
        updated = encrypted_step(
            crypten, rank, arch, params, batch_images, torch.tensor(batch_labels), lr,
            dp=dp, mean_over=rate * count, trainable=trainable,
        )  # fmt: skip
        params = updated if rank == 1 else None
        taken += len(batch_labels)
    if rank != 1 or params is None:
        return None
    return {"params": {k: v.tolist() for k, v in params.items()}, "cases": count,
            "case_steps": taken}  # fmt: skip


# ------------------------------------------------------------------- the owner's plaintext


def _owner_calibration(
    model: torch.nn.Module,
    arch: Architecture,
    parent: Checkpoint,
    owner_dir: Path,
    seed: int,
    sensitivity: float,
) -> tuple[float, Detector | None, float]:
    """Temperature, detector and screening threshold of the candidate, from the owner's data
    (its fit and calibration split, as ``python -m training`` chooses them)."""
    data = ImageFolder(owner_dir, Preprocessing(arch.image_size))
    keep, held = stratified_split(data.labels, 0.15, seed)
    logits = predict_logits(model, data.images[held]).detach().numpy()
    labels = data.labels[held].numpy()
    if not np.isfinite(logits).all():  # a diverged candidate: the gate refuses it below
        return 1.0, None, 0.5
    temperature = fit_temperature(logits, labels)
    threshold = 0.5
    if sensitivity > 0:
        threshold = choose_threshold(softmax(logits, temperature)[:, 1], labels, sensitivity)
    detector = None
    if parent.detector is not None:  # the same kind of detector as the parent's, refitted
        old = parent.detector
        try:
            detector = fit_unfamiliarity(
                model, arch, temperature, (data.images[keep], data.labels[keep]),
                data.images[held], method=old.method, features=old.features,
                flag_rate=old.target_flag_rate,
            )  # fmt: skip
        except (torch.linalg.LinAlgError, ValueError) as exc:  # degenerate features
            print(f"the candidate's detector could not be fitted: {exc}", file=sys.stderr)
    return temperature, detector, threshold


def _eval_figures(path: Path, eval_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    checkpoint = load_checkpoint(path)
    data = ImageFolder(eval_dir, Preprocessing(checkpoint.architecture.image_size))
    logits = predict_logits(checkpoint.model(), data.images).detach().numpy()
    labels = data.labels.numpy()
    ece = expected_calibration_error(softmax(logits, checkpoint.temperature), labels)
    return logits[:, 1] - logits[:, 0], labels, ece


def run(args: argparse.Namespace) -> int:
    parent = load_checkpoint(args.checkpoint)
    arch = parent.architecture
    if arch.backbone != "lenet":
        raise SystemExit("encrypted fine-tuning covers the whole LeNet only")
    count = len(list_samples(args.cases_dir))  # names only: this process opens no case's file
    if count < args.batch_size:
        print(f"only {count} settled cases: an update needs at least {args.batch_size}",
              file=sys.stderr)  # fmt: skip
        return 2
    dp = DPConfig(args.dp_epsilon, args.dp_delta, args.max_grad_norm)
    layers = None if args.train_layers == "all" else args.train_layers.split(",")
    if layers is not None:
        try:
            trainable_names(arch, layers)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        noise = plan(dp, dataset_size=count, batch_size=args.batch_size, epochs=args.epochs)
    except PrivacyBudgetError as exc:
        print(exc, file=sys.stderr)
        return 2
    outcome = run_parties(
        _party, str(args.checkpoint), str(args.cases_dir), noise.steps, noise.sample_rate,
        args.lr, dp.max_grad_norm, noise.noise_multiplier, layers,
    )[1]  # fmt: skip
    params = OrderedDict((k, torch.tensor(v)) for k, v in outcome["params"].items())
    model = unfold_lenet(params, arch)
    temperature, detector, threshold = _owner_calibration(
        model, arch, parent, args.owner_dir, args.seed, args.screening_sensitivity
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = args.out.with_name(args.out.name + ".partial")
    sha = save_checkpoint(
        staging, model, arch, temperature, detector=detector, decision_threshold=threshold
    )
    staging.replace(args.out)  # a crash before this line leaves no half-written candidate
    parent_d, labels, parent_ece = _eval_figures(args.checkpoint, args.eval_dir)
    candidate_d, labels_c, candidate_ece = _eval_figures(args.out, args.eval_dir)
    assert np.array_equal(labels, labels_c)
    finite = bool(np.isfinite(candidate_d).all())
    candidate_d = np.nan_to_num(candidate_d, nan=0.0, posinf=0.0, neginf=0.0)
    auc = paired_bootstrap_auc(parent_d, candidate_d, labels, resamples=args.resamples)
    verdict = judge(
        GatePolicy(args.max_auc_drop, args.max_ece_increase), auc, parent_ece, candidate_ece,
        detector_lost=parent.detector is not None and detector is None, finite=finite,
    )  # fmt: skip
    epsilon = epsilon_spent([(noise.noise_multiplier, noise.sample_rate, noise.steps)], dp.delta)
    record = {
        "schema": "crypto-doctor/finetune-provenance/1",
        "checkpoint_sha256": sha,
        "parent": {"path": str(args.checkpoint), "sha256": file_sha256(args.checkpoint)},
        "trained_at_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "architecture": arch.to_dict(),
        "temperature": temperature,
        "decision_threshold": threshold,
        "taught_by": {"settled_cases": outcome["cases"], "case_steps": outcome["case_steps"]},
        "how": "DP-SGD under two-party MPC (models.encrypted_training), layers "
        + args.train_layers,
        "differential_privacy": {
            "epsilon": epsilon, "delta": dp.delta, "max_grad_norm": dp.max_grad_norm,
            "noise_multiplier": noise.noise_multiplier, "sample_rate": noise.sample_rate,
            "steps": noise.steps, "accountant": "RDP (opacus), Poisson sampling",
            "noise_drawn_by": "party 0 (party 1 cannot remove it)",
        },
        "recalibrated_on": str(args.owner_dir),
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "train_layers": args.train_layers},
        "gate": {"policy": asdict(GatePolicy(args.max_auc_drop, args.max_ece_increase)),
                 "eval_dir": str(args.eval_dir), **verdict.to_dict()},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }  # fmt: skip
    write_json(args.out.with_suffix(".provenance.json"), record)
    print(json.dumps({"candidate": str(args.out), "promoted": verdict.promoted,
                      "reasons": list(verdict.reasons), "epsilon": epsilon,
                      "auc_parent": auc.auc_a, "auc_candidate": auc.auc_b}, indent=2))  # fmt: skip
    return 0 if verdict.promoted else REFUSED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.encrypted_finetune",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]).replace("%", "%%"),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="the parent (party 1)")
    parser.add_argument("--cases-dir", type=Path, required=True, help="yes/, no/ (party 0)")
    parser.add_argument("--owner-dir", type=Path, required=True, help="the owner's own yes/, no/")
    parser.add_argument("--eval-dir", type=Path, required=True, help="the owner's eval yes/, no/")
    parser.add_argument("--out", type=Path, required=True, help="the candidate checkpoint")
    parser.add_argument(
        "--train-layers", default="fc3",
        help="the layers that learn, e.g. fc2,fc3, or all (fewer parameters: less DP noise)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="expected cases per step")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--dp-epsilon", type=float, default=3.0)
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-auc-drop", type=float, default=0.002)
    parser.add_argument("--max-ece-increase", type=float, default=0.02)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="the owner's calibration split")
    parser.add_argument(
        "--screening-sensitivity", type=float, default=0.9,
        help="the operating point's sensitivity on the owner's calibration split (0: 0.5)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not (math.isfinite(args.lr) and args.lr > 0):
        parser.error("--epochs, --batch-size and --lr must be positive")
    if args.out.resolve() == args.checkpoint.resolve():
        parser.error("--out must not be the parent: the serving model is never overwritten")
    try:
        DPConfig(args.dp_epsilon, args.dp_delta, args.max_grad_norm)
    except ValueError as exc:
        parser.error(str(exc))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
