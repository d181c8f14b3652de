"""Encrypted fine-tuning on settled cases: a DP candidate model, and the gate that judges it.

    python -m training.encrypted_finetune --checkpoint models/lenet.pth --cases-dir CASES \\
        --owner-dir data/seed/train --eval-dir data/seed/eval --out runs/finetune/lenet.pth \\
        [--train-layers fc3 --epochs 4 --batch-size 8 --lr 0.2 --dp-epsilon 3 --dp-delta 1e-5
         --max-grad-norm 1 --max-auc-drop 0.002 --max-ece-increase 0.02
         --held-out-fraction 0.2]

Who reads what. Party 0 (a spawned process) reads only ``--cases-dir``: the settled cases'
images under ``yes/`` and ``no/`` as the doctors decided. Party 1 (another) reads only
``--checkpoint``. They run DP-SGD steps under MPC (``models.encrypted_training``): party 0
Poisson-samples each step's cases and tells party 1 their labels (public by design); every
image's gradient is clipped on shares and party 0's noise is added before the one opening,
of the noisy batch gradient, to party 1. Party 0 keeps ``--held-out-fraction`` of each class
out of training; after the steps, parent and candidate run encrypted on those cases, their
outputs are opened to party 0 alone (its own images), and party 0 tells party 1 only the
paired AUC summary. A ResNet18 learns its last layer only: its convolutions cost seconds per
image under MPC, so the features of every case are computed once, encrypted, and stay
secret-shared; each step then costs a few rounds, and party 0 secret-shares which cases it
takes and their labels (party 1 learns neither; the held-out cases reuse the features).
Party 1 hands the fine-tuned weights to this process, the model owner's,
which never reads the cases. Here, in plaintext and on the owner's own data only:

* the candidate gets its temperature, unfamiliarity detector and screening threshold again,
  from ``--owner-dir`` (its fit and calibration split, as ``python -m training`` does): the
  fine-tuned features moved, so the parent's detector no longer describes them;
* the gate compares it with the parent on ``--eval-dir``: eval AUC must not fall (the paired
  bootstrap's 95 % interval of the change must reach 0, and the change must be at least
  ``-max-auc-drop``, default 0.002) and ECE must not rise by more than
  ``--max-ece-increase`` (default 0.02); and on the held-out settled cases the change's
  interval must reach 0 (a handful of cases: only a fall beyond chance refuses).

The candidate is written to ``--out`` (with ``.provenance.json``: the parent's sha256, how
many cases taught it, the DP budget spent, the gate's figures and verdict) whether promoted
or refused; ``--checkpoint`` is never written. Exit status 0: promoted; 3: refused (the
reasons are printed and recorded); 2: bad arguments or a budget that allows no step.

A crash resumes. Party 1 keeps a journal beside ``--out`` (``.journal.pt``: its weights and
how many steps were taken) and writes it before and after every opening. Run the same
command again and the parties go on from the last finished step. A step whose opening may
have reached party 1 before the crash is counted as spent in the DP accounting, since
party 1 may have seen it, and then taken again. A journal of other inputs (another parent,
case folder size or setting) is refused, not overwritten: delete it to start over. The
journal is removed once the candidate and its provenance are written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import secrets
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from models.encrypted import fold, unfold_lenet, with_head
from models.encrypted_training import HEAD_LAYER
from models.mpc import run_parties
from models.nets import Architecture
from models.preprocessing import Preprocessing
from models.unfamiliarity import Detector
from training.calibration import expected_calibration_error, fit_temperature, softmax
from training.compare import PairedAUC, paired_bootstrap_auc
from training.data import ImageFolder, Sample, fingerprint, list_samples, stratified_split
from training.loop import predict_logits
from training.ood import fit_unfamiliarity
from training.privacy import DPConfig, PrivacyBudgetError, epsilon_spent, plan
from training.provenance import data_record, write_json
from training.run import LIMITS
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
    #: the same paired AUC on the held-out settled cases, measured encrypted (None: none held)
    held_out: dict[str, float | int] | None = None

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
    held_out: PairedAUC | None = None,
) -> Verdict:
    """Promote only when AUC did not fall more than allowed and ECE stayed within bound, and,
    on the held-out settled cases (few: only a fall beyond chance counts), did not fall."""
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
    if held_out is not None and held_out.ci_high < 0:
        reasons.append(
            f"on the {held_out.images} held-out settled cases (encrypted) AUC fell beyond chance "
            f"({held_out.auc_a:.4f} -> {held_out.auc_b:.4f}; 95 % CI of the change "
            f"[{held_out.ci_low:+.4f}, {held_out.ci_high:+.4f}])"
        )
    return Verdict(
        not reasons, tuple(reasons), auc.to_dict(), ece_parent, ece_candidate,
        None if held_out is None else held_out.to_dict(),
    )  # fmt: skip


# ----------------------------------------------------------------------------- the journal

JOURNAL_SCHEMA = "crypto-doctor/finetune-journal/1"


@dataclass(frozen=True)
class RunKey:
    """What an interrupted run's journal must match to be resumed."""

    parent_sha256: str
    cases: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    clip: float
    lr: float
    layers: tuple[str, ...] | None
    #: cases per class (no, yes) party 0 holds out of training for the encrypted evaluation
    held_out: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Progress:
    """Party 1's state between steps. ``begun``: steps whose opening may have happened (one
    more than ``done`` while a step runs); ``lost``: steps opened by a run that crashed before
    recording them (spent in the accounting, then taken again)."""

    done: int = 0
    begun: int = 0
    lost: int = 0
    resumes: int = 0
    case_steps: int = 0


class JournalMismatch(ValueError):
    pass


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal.pt")


def read_journal(path: Path, key: RunKey) -> tuple[Progress, OrderedDict[str, torch.Tensor]] | None:
    """The interrupted run's progress and party 1's weights, or None when there is none."""
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state.get("schema") != JOURNAL_SCHEMA or state.get("key") != _key_dict(key):
        raise JournalMismatch(
            f"{path} is the journal of a fine-tune with other inputs (parent, number of cases "
            "or settings); run that command again to resume it, or delete the journal to "
            "start over (the steps it opened stay spent for those cases)"
        )
    return Progress(**state["progress"]), OrderedDict(state["params"])


def write_journal(
    path: Path, key: RunKey, progress: Progress, params: dict[str, torch.Tensor]
) -> None:
    """Atomically (temp file, fsync, rename)."""
    staging = path.with_name(path.name + ".partial")
    with open(staging, "wb") as handle:
        torch.save({"schema": JOURNAL_SCHEMA, "key": _key_dict(key),
                    "progress": asdict(progress), "params": params}, handle)  # fmt: skip
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)


def _key_dict(key: RunKey) -> dict[str, Any]:
    record = asdict(key)
    record["layers"] = None if key.layers is None else list(key.layers)
    record["held_out"] = list(key.held_out)
    return record


# ------------------------------------------------------------------- the held-out cases


def held_out_sizes(class_counts: tuple[int, int], fraction: float) -> tuple[int, int]:
    """Cases per class (no, yes) kept out of training to judge the candidate: ``fraction`` of
    each class, rounded down; none at all when a class would get none (an AUC needs both)."""
    sizes = (int(class_counts[0] * fraction), int(class_counts[1] * fraction))
    return sizes if min(sizes) > 0 else (0, 0)


def split_held_out(
    samples: list[Sample], sizes: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 0's training and held-out indices: ``sizes`` cases per class, drawn with a seed
    taken from the cases' names, so a resumed run holds out the same cases."""
    by_name = sorted(range(len(samples)), key=lambda i: samples[i].path.name)
    names = "\n".join(samples[i].path.name for i in by_name).encode()
    generator = torch.Generator().manual_seed(int.from_bytes(sha256(names).digest()[:7], "big"))
    held = []
    for label, size in enumerate(sizes):
        of_class = torch.tensor([i for i in by_name if samples[i].label == label], dtype=torch.long)
        held.append(of_class[torch.randperm(len(of_class), generator=generator)[:size]])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(len(samples), dtype=torch.bool)
    keep[held_out] = False
    return torch.nonzero(keep).flatten(), held_out


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
    key: RunKey,
    journal: str,
) -> dict[str, Any] | None:
    """One party's DP-SGD steps; party 1 alone reads and writes ``journal``.

    LeNet: every step secret-shares its cases' images and runs the whole program
    (``encrypted_step``; party 0 tells party 1 the step's labels). ResNet18: the features of
    all cases are computed once, shared, and every step trains the last layer on them
    (``encrypted_head_step``; which cases a step takes, and their labels, stay party 0's)."""
    from models.crypten_compat import load_crypten
    from models.encrypted_training import (
        DPStep,
        encrypted_head_step,
        encrypted_step,
        features_once,
    )

    crypten = load_crypten()
    comm = crypten.communicator.get()
    params = parent = arch = None
    progress = Progress()
    if rank == 1:
        checkpoint = load_checkpoint(checkpoint_path)
        arch = checkpoint.architecture
        params = parent = fold(checkpoint.model(), arch, checkpoint.temperature)
        resumed = read_journal(Path(journal), key)
        if resumed is not None:  # an opening begun and not recorded counts as spent
            last, saved = resumed  # the layers that learn: the rest is the parent's
            params = OrderedDict(parent)
            params.update(saved)
            progress = replace(last, begun=last.done, lost=last.lost + last.begun - last.done,
                               resumes=last.resumes + 1)  # fmt: skip
    arch = Architecture(**comm.broadcast_obj(None if arch is None else arch.to_dict(), 1))
    start = comm.broadcast_obj(progress.done if rank == 1 else None, 1)
    images = labels = held_images = held_labels = None
    sampler = torch.Generator().manual_seed(secrets.randbits(63))
    if rank == 0:
        cases = ImageFolder(Path(cases_dir), Preprocessing(arch.image_size))
        train, held = split_held_out(cases.samples, key.held_out)
        images, labels = cases.images[train], cases.labels[train].float()
        held_images, held_labels = cases.images[held], cases.labels[held]
    count = comm.broadcast_obj(None if labels is None else len(labels), 0)
    if count != key.cases:
        raise RuntimeError(f"party 0 holds {count} cases; the run was planned for {key.cases}")
    dp = DPStep(key.clip, key.noise_multiplier)
    trainable = None if key.layers is None else trainable_names(arch, list(key.layers))

    def journaled(params: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """The layers that learn (what the journal and the owner get; the rest is the parent's)."""
        return params if trainable is None else OrderedDict(
            (k, v) for k, v in params.items() if k in trainable)  # fmt: skip

    features = held_features = None
    if head_only(arch):  # the convolutions once, for the cases that train and the held-out
        everything = None
        if images is not None and held_images is not None:
            everything = torch.cat([images, held_images])
        shared = features_once(crypten, rank, arch, parent, everything, count + sum(key.held_out))
        features, held_features = shared[:count], shared[count:]
    for step in range(start, key.steps):
        if features is not None:  # every step opens: its draw is hidden, even an empty one
            chosen = None
            if labels is not None:
                chosen = torch.rand(count, generator=sampler) < key.sample_rate
            if rank == 1 and params is not None:
                write_journal(Path(journal), key, replace(progress, begun=step + 1),
                              journaled(params))  # fmt: skip
            updated = encrypted_head_step(crypten, rank, arch, params, features, chosen, labels,
                                          key.lr, dp, mean_over=key.sample_rate * count)  # fmt: skip
            params = updated if rank == 1 else None
            progress = replace(progress, done=step + 1, begun=step + 1)
            if rank == 1 and params is not None:
                write_journal(Path(journal), key, progress, journaled(params))
            continue
        batch_images = drawn = None
        if images is not None and labels is not None:  # party 0: Poisson sampling
            picked = torch.nonzero(torch.rand(count, generator=sampler) < key.sample_rate)
            batch_images, drawn = images[picked.flatten()], labels[picked.flatten()].tolist()
        batch_labels = comm.broadcast_obj(drawn, 0)
        if rank == 1 and params is not None:
            if batch_labels:  # before the opening: a crash from here on counts the step
                write_journal(Path(journal), key, replace(progress, begun=step + 1),
                              journaled(params))  # fmt: skip
        if batch_labels:  # an empty draw opens nothing (the accountant still counts it)
            updated = encrypted_step(
                crypten, rank, arch, params, batch_images, torch.tensor(batch_labels),
                key.lr, dp=dp, mean_over=key.sample_rate * count, trainable=trainable,
            )  # fmt: skip
            params = updated if rank == 1 else None
        progress = replace(progress, done=step + 1, begun=step + 1,
                           case_steps=progress.case_steps + len(batch_labels))  # fmt: skip
        if rank == 1 and params is not None:
            write_journal(Path(journal), key, progress, journaled(params))
    held_out = _judge_held_out(crypten, rank, arch, parent, params, held_images, held_labels,
                               sum(key.held_out), held_features)  # fmt: skip
    if rank != 1 or params is None:
        return None
    return {"params": {k: v.tolist() for k, v in journaled(params).items()}, "cases": count,
            "progress": asdict(progress), "held_out": held_out,
            "resumed_at_step": start if progress.resumes else None}  # fmt: skip


def head_only(arch: Architecture) -> bool:
    """ResNet18 fine-tunes its last layer alone, on features computed once under MPC."""
    return arch.backbone != "lenet"


def _judge_held_out(
    crypten: Any,
    rank: int,
    arch: Architecture,
    parent: OrderedDict[str, torch.Tensor] | None,
    candidate: OrderedDict[str, torch.Tensor] | None,
    images: torch.Tensor | None,
    labels: torch.Tensor | None,
    count: int,
    features: Any = None,
) -> dict[str, Any] | None:
    """Parent and candidate on the held-out cases, encrypted: their outputs are opened to
    party 0 (its own images), which tells party 1 only the paired AUC summary. With
    ``features`` (the cases' shared features) only the last layers run."""
    from models.encrypted_training import differences_to_party0, head_differences_to_party0

    if count == 0:
        return None
    if features is not None:
        before = head_differences_to_party0(crypten, rank, arch, parent, features)
        after = head_differences_to_party0(crypten, rank, arch, candidate, features)
    else:
        before = differences_to_party0(crypten, rank, arch, parent, images, count)
        after = differences_to_party0(crypten, rank, arch, candidate, images, count)
    summary = None
    if before is not None and after is not None and labels is not None:  # party 0
        paired = paired_bootstrap_auc(before.numpy(), after.numpy(), labels.numpy(), resamples=2000)
        summary = paired.to_dict()
    told: dict[str, Any] = crypten.communicator.get().broadcast_obj(summary, 0)
    return told


# ------------------------------------------------------------------- the owner's plaintext


def limits(cases: int) -> tuple[str, ...]:
    """What a fine-tuned version's passport says it is not."""
    return (
        f"fine-tuned under differential privacy on {cases} settled cases whose labels are a "
        "doctors' panel's consensus, not confirmed diagnoses; its figures are on the model "
        "owner's eval set, not on those cases' population",
        "its parent was trained on generated data only (training.synthetic) and it is evaluated "
        "on generated data only: figures on real scans are unknown",
        *LIMITS[1:],
    )


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


@dataclass(frozen=True)
class EvalFigures:
    """A checkpoint on the owner's eval set: logit differences, ECE, and its operating point."""

    differences: np.ndarray
    labels: np.ndarray
    ece: float
    sensitivity: float
    specificity: float


def _eval_figures(path: Path, data: ImageFolder) -> EvalFigures:
    checkpoint = load_checkpoint(path)
    logits = predict_logits(checkpoint.model(), data.images).detach().numpy()
    labels = data.labels.numpy()
    probabilities = softmax(logits, checkpoint.temperature)
    flagged = probabilities[:, 1] >= checkpoint.decision_threshold
    return EvalFigures(
        logits[:, 1] - logits[:, 0], labels,
        expected_calibration_error(probabilities, labels),
        float(flagged[labels == 1].mean()), float((~flagged[labels == 0]).mean()),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    parent = load_checkpoint(args.checkpoint)
    arch = parent.architecture
    train_layers = args.train_layers or HEAD_LAYER[arch.backbone]
    if head_only(arch) and train_layers != HEAD_LAYER[arch.backbone]:
        print(f"a {arch.backbone} fine-tunes its last layer only (--train-layers "
              f"{HEAD_LAYER[arch.backbone]}), on features computed once under MPC",
              file=sys.stderr)  # fmt: skip
        return 2
    samples = list_samples(args.cases_dir)  # names only: this process opens no case's file
    yes = sum(sample.label for sample in samples)
    held_out = held_out_sizes((len(samples) - yes, yes), args.held_out_fraction)
    count = len(samples) - sum(held_out)  # the cases that train
    if count < args.batch_size:
        print(f"only {count} settled cases to train on (and {sum(held_out)} held out): an "
              f"update needs at least {args.batch_size}", file=sys.stderr)  # fmt: skip
        return 2
    dp = DPConfig(args.dp_epsilon, args.dp_delta, args.max_grad_norm)
    layers = None if train_layers == "all" else train_layers.split(",")
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
    key = RunKey(file_sha256(args.checkpoint), count, noise.steps, noise.sample_rate,
                 noise.noise_multiplier, dp.max_grad_norm, args.lr,
                 None if layers is None else tuple(layers), held_out)  # fmt: skip
    journal = journal_path(args.out)
    try:
        resumed = read_journal(journal, key)
    except JournalMismatch as exc:
        print(exc, file=sys.stderr)
        return 2
    if resumed is not None:
        print(f"resuming the interrupted fine-tune at step {resumed[0].done} of {key.steps}",
              file=sys.stderr)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    outcome = run_parties(_party, str(args.checkpoint), str(args.cases_dir), key, str(journal))[1]
    progress = Progress(**outcome["progress"])
    params = fold(parent.model(), arch, parent.temperature)  # the layers that learnt, on it
    params.update((k, torch.tensor(v)) for k, v in outcome["params"].items())
    if head_only(arch):
        model = with_head(parent.model(), arch, params)
    else:
        model = unfold_lenet(params, arch)
    temperature, detector, threshold = _owner_calibration(
        model, arch, parent, args.owner_dir, args.seed, args.screening_sensitivity
    )
    staging = args.out.with_name(args.out.name + ".partial")
    sha = save_checkpoint(
        staging, model, arch, temperature, detector=detector, decision_threshold=threshold
    )
    staging.replace(args.out)  # a crash before this line leaves no half-written candidate
    eval_set = ImageFolder(args.eval_dir, Preprocessing(arch.image_size))
    before, after = _eval_figures(args.checkpoint, eval_set), _eval_figures(args.out, eval_set)
    finite = bool(np.isfinite(after.differences).all())
    candidate_d = np.nan_to_num(after.differences, nan=0.0, posinf=0.0, neginf=0.0)
    auc = paired_bootstrap_auc(
        before.differences, candidate_d, before.labels, resamples=args.resamples
    )
    verdict = judge(
        GatePolicy(args.max_auc_drop, args.max_ece_increase), auc, before.ece, after.ece,
        detector_lost=parent.detector is not None and detector is None, finite=finite,
        held_out=None if outcome["held_out"] is None else PairedAUC(**outcome["held_out"]),
    )  # fmt: skip
    # steps opened by a run that crashed before recording them were taken again: both count
    spent = noise.steps + progress.lost
    epsilon = epsilon_spent([(noise.noise_multiplier, noise.sample_rate, spent)], dp.delta)
    record = {
        "schema": "crypto-doctor/finetune-provenance/1",
        "checkpoint_sha256": sha,
        "parent": {"path": str(args.checkpoint), "sha256": file_sha256(args.checkpoint)},
        "trained_at_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "architecture": arch.to_dict(),
        "temperature": temperature,
        "decision_threshold": threshold,
        # ResNet18's steps hide their draws from party 1, which writes this record's input
        "taught_by": {"settled_cases": outcome["cases"],
                      "case_steps": None if head_only(arch) else progress.case_steps,
                      "held_out_cases": sum(held_out)},
        # what a passport entry reads (models.passport.entry): the run, its figures, its data
        "training": {"type": "encrypted fine-tune", "settled_cases": outcome["cases"],
                     "train_layers": train_layers},
        "metrics": {"epochs": args.epochs, "auc": auc.auc_b, "ece": after.ece,
                    "sensitivity": after.sensitivity, "specificity": after.specificity,
                    "limits": list(limits(outcome["cases"]))},
        "eval_data": data_record(args.eval_dir, fingerprint(eval_set.root, eval_set.samples),
                                 eval_set.class_counts()),
        "how": "DP-SGD under two-party MPC (models.encrypted_training), layers " + train_layers
        + (" on features computed once under MPC" if head_only(arch) else ""),
        "differential_privacy": {
            "epsilon": epsilon, "delta": dp.delta, "max_grad_norm": dp.max_grad_norm,
            "noise_multiplier": noise.noise_multiplier, "sample_rate": noise.sample_rate,
            "steps": noise.steps, "steps_spent": spent,
            "accountant": "RDP (opacus), Poisson sampling",
            "noise_drawn_by": "party 0 (party 1 cannot remove it)",
        },
        "interruptions": {"resumes": progress.resumes, "last_resumed_at_step":
                          outcome["resumed_at_step"], "steps_opened_twice": progress.lost},
        "recalibrated_on": str(args.owner_dir),
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "train_layers": train_layers},
        "gate": {"policy": asdict(GatePolicy(args.max_auc_drop, args.max_ece_increase)),
                 "eval_dir": str(args.eval_dir), **verdict.to_dict()},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }  # fmt: skip
    write_json(args.out.with_suffix(".provenance.json"), record)
    journal.unlink(missing_ok=True)  # the run is complete: nothing is left to resume
    print(json.dumps({"candidate": str(args.out), "promoted": verdict.promoted,
                      "held_out": verdict.held_out,
                      "reasons": list(verdict.reasons), "epsilon": epsilon,
                      "resumed_at_step": outcome["resumed_at_step"],
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
        "--train-layers", default=None,
        help="the layers that learn, e.g. fc2,fc3, or all (fewer parameters: less DP noise); "
        "default the last layer: fc3 for LeNet, fc for ResNet18 (the only choice there)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="expected cases per step")
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--dp-epsilon", type=float, default=3.0)
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-auc-drop", type=float, default=0.002)
    parser.add_argument("--max-ece-increase", type=float, default=0.02)
    parser.add_argument(
        "--held-out-fraction", type=float, default=0.2,
        help="of each class of cases, kept out of training to judge the candidate encrypted "
        "(0: none)",
    )  # fmt: skip
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="the owner's calibration split")
    parser.add_argument(
        "--screening-sensitivity", type=float, default=0.9,
        help="the operating point's sensitivity on the owner's calibration split (0: 0.5)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not (math.isfinite(args.lr) and args.lr > 0):
        parser.error("--epochs, --batch-size and --lr must be positive")
    if not 0 <= args.held_out_fraction < 1:
        parser.error("--held-out-fraction must be at least 0 and below 1")
    if args.out.resolve() == args.checkpoint.resolve():
        parser.error("--out must not be the parent: the serving model is never overwritten")
    try:
        DPConfig(args.dp_epsilon, args.dp_delta, args.max_grad_norm)
    except ValueError as exc:
        parser.error(str(exc))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
