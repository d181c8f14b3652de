"""Benchmark: what differential privacy buys against membership inference, and what it costs.

Not a test. For ε ∈ {∞, 8, 3, 1} (∞ = no DP), central training (``python -m training``'s
``run_training``) and a real federation (SuperLink + 2 SuperNodes on 127.0.0.1), LeNet 64 px:

* eval AUC, sensitivity (at calibrated P(tumor) >= 0.5) and ECE on the fixed eval set ``data/seed/eval`` (2,000 generated images), with
  stratified bootstrap 95 % intervals;
* the loss-threshold membership-inference attack's AUC and advantage (TPR - FPR at the best
  threshold), members = the images the gradient steps saw, non-members = as many held-out
  images of the same generator, with bootstrap 95 % intervals;
* training time.

The setting: 900 member images (450 per class), 40 epochs, batch 16, no augmentation, the
last epoch kept. The non-DP model must both learn and overfit: at 120 images it overfit
(attack AUC 0.81) but learnt nothing (eval AUC 0.48), and with augmentation it learnt (0.74 to
0.82) but no longer overfit (attack AUC 0.52 to 0.56), measured. The central temperature is
fitted on 128 public generated images (never a member).

    .venv/bin/python scripts/bench_privacy.py                 # central and federated
    .venv/bin/python scripts/bench_privacy.py --part central  # one part (rows merge)
    .venv/bin/python scripts/bench_privacy.py --part central --epsilons 100000
        # clipping with next to no noise: what the DP pipeline costs before the noise
    .venv/bin/python scripts/bench_privacy.py --part pretrained
        # public pre-training (1,000 public generated images, 40 epochs), then fine-tuning
        # on the members: the pre-trained model alone (epsilon 0: no private image), without
        # DP, and with DP (batch 64) at each epsilon, all from the same start
    .venv/bin/python scripts/bench_privacy.py --part federated-pretrained
        # the same in the federation: the model owner pre-trains round 1's model on 1,000
        # public generated images of its own (--dp-public-pretrain-epochs 40)

Writes ``docs/bench/privacy.json`` and ``docs/bench/privacy.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import load_checkpoint  # noqa: E402
from models.nets import Architecture, build_model  # noqa: E402
from models.preprocessing import Preprocessing  # noqa: E402
from training.calibration import fit_temperature  # noqa: E402
from training.data import ImageFolder, list_samples, stratified_split  # noqa: E402
from training.federated.hospital import from_arrays  # noqa: E402
from training.federated.local import LocalFederation, LocalHospital  # noqa: E402
from training.federated.outputs import FederatedPaths, load_arrays  # noqa: E402
from training.federated.protocol import RunConfig  # noqa: E402
from training.federated.sites import generate_eval  # noqa: E402
from training.loop import (  # noqa: E402
    LoopConfig,
    predict_logits,  # noqa: E402
    train,
)
from training.privacy import (  # noqa: E402
    DPConfig,
    dp_train,
    public_images,
    public_pretrain,
    set_public_batchnorm,
)
from training.privacy_audit import loss_attack  # noqa: E402
from training.screening import bootstrap, intervals_to_dict  # noqa: E402

OUT = ROOT / "docs" / "bench"
SEED_DATA = ROOT / "data" / "seed"
EPSILONS = (math.inf, 8.0, 3.0, 1.0)
PUBLIC = 128  # public generated images: frozen BatchNorm statistics (DP) and the temperature
PUBLIC_SEED = 4242  # the federated model owner's public folder (data/seed is seed 0)
log = logging.getLogger("bench_privacy")


def _copy(samples: list[Any], root: Path, target: Path) -> Path:
    for sample in samples:
        dest = target / sample.path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, dest)
    return target


def prepare(work: Path, train_images: int) -> dict[str, Path]:
    """Disjoint balanced folders from data/seed/train: members, non-members, public, 2 sites."""
    root = SEED_DATA / "train"
    samples = list_samples(root)
    by_label = [[s for s in samples if s.label == c] for c in (0, 1)]
    half = train_images // 2
    room = min(len(group) for group in by_label) - PUBLIC // 2
    if half < 1 or 2 * half > room:
        raise SystemExit(
            f"--train-images {train_images}: members and as many non-members per class must fit "
            f"in {room} images per class of {root} (the rest are the public set); at most {room}"
        )
    parts: dict[str, list[Any]] = {"members": [], "non_members": [], "public": []}
    for group in by_label:
        parts["members"] += group[:half]
        parts["non_members"] += group[half : 2 * half]
        parts["public"] += group[-(PUBLIC // 2) :]  # the public BatchNorm set: never trained on
    shutil.rmtree(work, ignore_errors=True)
    folders = {name: _copy(items, root, work / name) for name, items in parts.items()}
    for i in range(2):  # the federation: the members split between two hospitals
        items = [s for group in by_label for s in group[:half][i::2]]
        folders[f"h{i + 1}"] = _copy(items, root, work / f"h{i + 1}")
    return folders


def _interval(intervals: dict[str, Any], key: str) -> list[float]:
    i = intervals[key]
    return [i["value"], i["low"], i["high"]]


def _recipe(args: argparse.Namespace) -> LoopConfig:
    """The members' training: no augmentation, the last epoch kept (no early stopping)."""
    return LoopConfig(
        max_epochs=args.epochs, batch_size=args.batch_size, augment=False, progress=False,
        keep="last",
    )  # fmt: skip


def central_row(
    eps: float, folders: dict[str, Path], args: argparse.Namespace, eval_set: ImageFolder
) -> dict[str, Any]:
    """Central training on all of ``members`` (no calibration split, the last epoch kept: the
    non-DP model overfits as it would without early stopping)."""
    arch = Architecture("lenet", 64, "quad")
    members = _folder(folders["members"])
    public = public_images(arch, PUBLIC, 0)
    empty = (members[0][:0], members[1][:0])
    config = _recipe(args)
    torch.manual_seed(0)
    model = build_model(arch)
    started = time.perf_counter()
    record: dict[str, Any] | None = None
    if math.isinf(eps):
        train(model, members, empty, empty, config)
    else:
        set_public_batchnorm(model, public[0])
        result = dp_train(model, members, empty, empty, config, DPConfig(eps, 1e-5, 1.0))
        record = result.record()
    seconds = time.perf_counter() - started
    temperature = fit_temperature(predict_logits(model, public[0]).numpy(), public[1].numpy())
    attack = loss_attack(model, members, _folder(folders["non_members"]), resamples=args.resamples)
    return {
        "setting": "central",
        "epsilon_target": eps,
        "epsilon_spent": record["epsilon"] if record else None,
        "noise_multiplier": record["noise_multiplier"] if record else None,
        **_eval_figures(model, temperature, eval_set, args.resamples),
        "attack": attack.to_dict(),
        "training_seconds": round(seconds, 1),
        "members": len(members[1]),
    }


def pretrained_rows(
    epsilons: list[float],
    folders: dict[str, Path],
    args: argparse.Namespace,
    eval_set: ImageFolder,
) -> list[dict[str, Any]]:
    """Public pre-training, then fine-tuning on the members (central): a row for the
    pre-trained model alone (no private image, ε = 0) and one per ε, all from the same start."""
    arch = Architecture("lenet", 64, "quad")
    generated = public_images(arch, args.public_images + PUBLIC, 0)
    public = (generated[0][: args.public_images], generated[1][: args.public_images])
    held = (generated[0][args.public_images :], generated[1][args.public_images :])  # T only
    members = _folder(folders["members"])
    non_members = _folder(folders["non_members"])
    empty = (members[0][:0], members[1][:0])
    torch.manual_seed(0)
    start = build_model(arch)
    started = time.perf_counter()
    public_pretrain(start, public, args.public_epochs, 0)
    pretrain_seconds = time.perf_counter() - started
    setting = (
        f"central, pre-trained on {args.public_images} public images ({args.public_epochs} "
        f"epochs), DP batch {args.dp_batch_size}"
    )
    config = _recipe(args)
    rows = []
    for eps in [0.0, *epsilons]:
        model = copy.deepcopy(start)
        record: dict[str, Any] | None = None
        started = time.perf_counter()
        if math.isinf(eps):  # what one would do without DP: fine-tune everything
            train(model, members, empty, empty, config)
        elif eps > 0:
            set_public_batchnorm(model, public[0])
            fine_tune = replace(config, batch_size=args.dp_batch_size)
            result = dp_train(model, members, empty, empty, fine_tune, DPConfig(eps, 1e-5, 1.0))
            record = result.record()
        seconds = time.perf_counter() - started
        temperature = fit_temperature(predict_logits(model, held[0]).numpy(), held[1].numpy())
        attack = loss_attack(model, members, non_members, resamples=args.resamples)
        rows.append(
            {
                "part": "pretrained",
                "setting": setting if eps else f"{setting}: no private image",
                "epsilon_target": eps,
                "epsilon_spent": record["epsilon"] if record else (0.0 if eps == 0 else None),
                "noise_multiplier": record["noise_multiplier"] if record else None,
                **_eval_figures(model, temperature, eval_set, args.resamples),
                "attack": attack.to_dict(),
                "training_seconds": round(seconds, 1),
                "pretraining_seconds": round(pretrain_seconds, 1),
                "members": len(members[1]) if eps else 0,
            }
        )
    return rows


def _part(row: dict[str, Any]) -> str:
    """Which part of the benchmark measured ``row`` (rows merge by part and ε)."""
    return str(row.get("part") or row["setting"].split(" ")[0])


def _eval_figures(
    model: torch.nn.Module, temperature: float, eval_set: ImageFolder, resamples: int
) -> dict[str, list[float]]:
    """AUC, sensitivity at P(tumor) >= 0.5 and ECE with stratified bootstrap 95 % intervals."""
    logits = predict_logits(model, eval_set.images).double().numpy()
    d = (logits[:, 1] - logits[:, 0]) / temperature
    p = 1.0 / (1.0 + np.exp(-d))
    ev = intervals_to_dict(bootstrap(p, eval_set.labels.numpy(), 0.5, resamples=resamples, seed=0))
    return {
        "eval_auc": _interval(ev, "auc"),
        "eval_sensitivity": _interval(ev, "sensitivity"),
        "eval_ece": _interval(ev, "ece"),
    }


def _folder(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    folder = ImageFolder(path, Preprocessing(64))
    return folder.images, folder.labels


def federated_row(
    eps: float,
    folders: dict[str, Path],
    args: argparse.Namespace,
    eval_set: ImageFolder,
    public_dir: Path | None = None,
    measure_start: bool = False,
) -> list[dict[str, Any]]:
    """One real federation at ``eps``. With ``public_dir`` the model owner first pre-trains
    round 1's model on those public images (``--dp-public-pretrain-epochs``) and DP runs at
    ``--dp-batch-size``; with ``measure_start`` too, that start (the same for every ε) gets
    a row of its own at ε = 0 (no private image)."""
    pretrained = public_dir is not None
    tag = f"{'pretrained-' if pretrained else ''}eps-{eps}"
    out = args.work / "federated" / f"{tag}.pth"
    private = not math.isinf(eps)
    run = RunConfig(
        rounds=args.rounds, local_epochs=args.epochs // args.rounds,
        batch_size=args.dp_batch_size if pretrained and private else args.batch_size,
        min_hospitals=2, round_timeout_s=900.0, out=str(out), eval_dir=str(SEED_DATA / "eval"),
        dp_epsilon=eps if private else 0.0, dp_public_dir=str(public_dir or folders["public"]),
        dp_public_pretrain_epochs=args.public_epochs if pretrained else 0,
        augmentation="none", lr_schedule="constant",  # as the central rows: no augmentation,
        keep_epoch="last",  # and no early stopping (DP rows keep the last epoch anyway)
    )  # fmt: skip
    hospitals = [LocalHospital(n, folders[n]) for n in ("h1", "h2")]
    started = time.perf_counter()
    with LocalFederation(args.work / "processes" / tag, hospitals) as federation:
        metrics = federation.run(run, timeout=3600)
    seconds = time.perf_counter() - started
    checkpoint = load_checkpoint(out)
    members_i, members_l = [], []
    for name in ("h1", "h2"):  # each hospital's local training split (as load_site splits)
        site = ImageFolder(folders[name], Preprocessing(64))
        keep, _ = stratified_split(site.labels, run.calibration_fraction, run.seed)
        members_i.append(site.images[keep])
        members_l.append(site.labels[keep])
    members = (torch.cat(members_i), torch.cat(members_l))
    non_members = _folder(folders["non_members"])
    last = metrics["rounds"][-1]["hospitals"]
    spent = [h.get("dp_epsilon") for h in last.values() if "dp_epsilon" in h]
    setting = f"federated (2 hospitals, {args.rounds} rounds x {run.local_epochs} epochs)"
    if pretrained:
        setting = (
            f"federated, pre-trained by the owner on {args.public_images} public images "
            f"({args.public_epochs} epochs), DP batch {args.dp_batch_size}"
        )
    model = checkpoint.model()
    rows = [
        {
            "part": "federated-pretrained" if pretrained else "federated",
            "setting": setting,
            "epsilon_target": eps,
            "epsilon_spent": max(spent) if spent else None,
            "noise_multiplier": max(h["dp_noise_multiplier"] for h in last.values())
            if spent
            else None,
            **_eval_figures(model, checkpoint.temperature, eval_set, args.resamples),
            "attack": loss_attack(model, members, non_members, resamples=args.resamples).to_dict(),
            "training_seconds": round(seconds, 1),
            "members": len(members[1]),
        }
    ]
    if measure_start:  # the owner's round-1 model as archived: the public images alone
        start, _ = load_arrays(
            FederatedPaths.for_checkpoint(out).updates / "round-000" / "global.npz"
        )
        model = from_arrays(run.architecture(), start)
        held = _folder(folders["public"])  # 128 images neither the owner nor a hospital saw
        temperature = fit_temperature(predict_logits(model, held[0]).numpy(), held[1].numpy())
        rows.append(
            {
                **rows[0],
                "setting": f"{setting}: no private image",
                "epsilon_target": 0.0,
                "epsilon_spent": 0.0,
                "noise_multiplier": None,
                **_eval_figures(model, temperature, eval_set, args.resamples),
                "attack": loss_attack(
                    model, members, non_members, resamples=args.resamples
                ).to_dict(),
                "training_seconds": 0.0,
                "members": 0,
            }
        )
    return rows


def public_folder(args: argparse.Namespace) -> Path:
    """The model owner's public images for the federated pretrained part: generated, standard
    profile, balanced, a seed no member, hospital or eval image comes from."""
    root = args.work / "data" / f"owner-public-{args.public_images}"
    if not (root / "manifest.json").exists():
        generate_eval(root, count=args.public_images, seed=PUBLIC_SEED)
    return root


def _ci(v: list[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | ε target | ε spent (RDP) | σ | eval AUC [95% CI] | sensitivity | ECE "
        "| attack AUC [95% CI] | attack advantage [95% CI] | training s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a = r["attack"]
        eps = "∞ (no DP)" if math.isinf(r["epsilon_target"]) else f"{r['epsilon_target']:g}"
        if r["epsilon_target"] == 0:
            eps = "0 (no private data)"
        spent = "-" if r["epsilon_spent"] is None else f"{r['epsilon_spent']:.2f}"
        sigma = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.2f}"
        lines.append(
            f"| {r['setting']} | {eps} | {spent} | {sigma} | {_ci(r['eval_auc'])} "
            f"| {_ci(r['eval_sensitivity'])} | {_ci(r['eval_ece'])} "
            f"| {a['auc']:.3f} [{a['auc_ci95'][0]:.3f}, {a['auc_ci95'][1]:.3f}] "
            f"| {a['advantage']:.3f} [{a['advantage_ci95'][0]:.3f}, {a['advantage_ci95'][1]:.3f}] "
            f"| {r['training_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part",
        choices=("all", "central", "federated", "pretrained", "federated-pretrained"),
        default="all",
    )
    parser.add_argument("--train-images", type=int, default=900)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epsilons", default="inf,8,3,1")
    parser.add_argument("--public-images", type=int, default=1000, help="pretrained parts")
    parser.add_argument("--public-epochs", type=int, default=40, help="pretrained parts")
    parser.add_argument(
        "--dp-batch-size", type=int, default=64, help="pretrained parts: DP fine-tuning's batch"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench-privacy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    epsilons = [float(e) for e in args.epsilons.split(",")]
    folders = prepare(args.work / "data", args.train_images)
    OUT.mkdir(parents=True, exist_ok=True)
    out_json = OUT / "privacy.json"
    previous = json.loads(out_json.read_text()) if out_json.exists() else {"rows": []}
    for r in previous["rows"]:
        r["epsilon_target"] = float(r["epsilon_target"])
    rows: list[dict[str, Any]] = []
    eval_set = ImageFolder(SEED_DATA / "eval", Preprocessing(64))
    if args.part in ("all", "central"):
        rows += [central_row(eps, folders, args, eval_set) for eps in epsilons]
    if args.part in ("all", "federated"):
        for eps in epsilons:
            rows += federated_row(eps, folders, args, eval_set)
    if args.part in ("all", "federated-pretrained"):
        public_dir = public_folder(args)
        for eps in epsilons:
            rows += federated_row(
                eps, folders, args, eval_set, public_dir, measure_start=eps == epsilons[0]
            )
    if args.part in ("all", "pretrained"):
        rows += pretrained_rows(epsilons, folders, args, eval_set)
    measured = {(_part(r), r["epsilon_target"]) for r in rows}
    replaced = {  # their settings change with their flags
        _part(r) for r in rows if r.get("part") in ("pretrained", "federated-pretrained")
    }
    kept = [  # rows of the other parts and epsilons stay, from their own runs
        r for r in previous["rows"]
        if (_part(r), r["epsilon_target"]) not in measured and _part(r) not in replaced
    ]  # fmt: skip
    order = {"central": 0, "pretrained": 1, "federated": 2, "federated-pretrained": 3}
    rows = sorted(
        kept + rows, key=lambda r: (order.get(_part(r), 3), r["setting"], -r["epsilon_target"])
    )
    record = {
        "rows": [{**r, "epsilon_target": str(r["epsilon_target"])} for r in rows],
        "settings": {k: str(v) for k, v in vars(args).items()},
        "eval_set": "data/seed/eval (2,000 generated images, seed 0)",
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    text = table(rows)
    out_json.write_text(json.dumps(record, indent=2) + "\n")
    (OUT / "privacy.md").write_text(
        text + f"\n\nload average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
