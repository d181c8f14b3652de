"""Benchmark: hospital federation against each hospital alone and pooled training.

Not a test. Four generated hospitals with different scanners and case mixes (about 300
images each), one common eval set of 2,000 generated images (the same for every row), LeNet.
Rows: each hospital alone, pooled central training (the upper reference), FedAvg, FedMedian,
both again with one poisoned hospital (its update scaled x10, the boosted model-replacement
attack), and FedAvg under SecAgg+ for its cost. Every AUC has a paired-bootstrap 95 % CI
(the same resampled eval images for every row) and its difference to pooled training.
The federated rows are real processes: a SuperLink and four SuperNodes on 127.0.0.1.
The defaults are the measured recommendation: 50 rounds x 20 local epochs, server momentum
0.7 (FedAvgM, also applied to FedMedian's aggregate), each hospital's last local epoch kept.

    .venv/bin/python scripts/bench_federated.py            # ~2 h on 2 cores (quiet)
    .venv/bin/python scripts/bench_federated.py --rounds 2 --images-per-hospital 60 --eval-images 200

Writes ``docs/bench/federated.json`` and ``docs/bench/federated.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import load_checkpoint  # noqa: E402
from models.nets import build_model  # noqa: E402
from models.preprocessing import Preprocessing  # noqa: E402
from training.calibration import fit_temperature  # noqa: E402
from training.data import ImageFolder  # noqa: E402
from training.federated.hospital import SiteData, load_site  # noqa: E402
from training.federated.local import LocalFederation, LocalHospital  # noqa: E402
from training.federated.protocol import RunConfig  # noqa: E402
from training.federated.sites import generate_eval, generate_site, site_profile  # noqa: E402
from training.loop import LoopConfig, predict_logits, train  # noqa: E402
from training.metrics import classification_report, roc_auc  # noqa: E402

OUT = ROOT / "docs" / "bench"
log = logging.getLogger("bench_federated")


def central(sites: list[SiteData], run: RunConfig, eval_set: ImageFolder) -> np.ndarray:
    """Train one model on the union of ``sites`` for rounds x local epochs; eval logits / T."""
    torch.manual_seed(run.seed)
    model = build_model(run.architecture())
    cat = torch.cat
    config = LoopConfig(
        max_epochs=run.rounds * run.local_epochs, batch_size=run.batch_size, lr=run.lr,
        weight_decay=run.weight_decay, augmentation=run.augmentation, seed=run.seed,
        progress=False,
    )  # fmt: skip
    calib = (cat([s.calib_images for s in sites]), cat([s.calib_labels for s in sites]))
    train(
        model,
        (cat([s.train_images for s in sites]), cat([s.train_labels for s in sites])),
        calib,
        (eval_set.images[:0], eval_set.labels[:0]),
        config,
    )
    temperature = fit_temperature(predict_logits(model, calib[0]).numpy(), calib[1].numpy())
    return predict_logits(model, eval_set.images).double().numpy() / temperature


def federated_logits(checkpoint: Path, eval_set: ImageFolder) -> np.ndarray:
    ck = load_checkpoint(checkpoint)
    return predict_logits(ck.model(), eval_set.images).double().numpy() / ck.temperature


def paired_auc(
    rows: dict[str, np.ndarray], labels: np.ndarray, reference: str, resamples: int, seed: int
) -> dict[str, dict[str, float]]:
    """AUC with a 95 % CI per row and of (row - reference), on shared bootstrap resamples."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in (0, 1)]
    scores = {name: logits[:, 1] - logits[:, 0] for name, logits in rows.items()}
    draws: dict[str, list[float]] = {name: [] for name in rows}
    diffs: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        ref = roc_auc(scores[reference][idx], labels[idx])
        for name, s in scores.items():
            auc = roc_auc(s[idx], labels[idx])
            draws[name].append(auc)
            diffs[name].append(auc - ref)
    out = {}
    for name, s in scores.items():
        point = roc_auc(s, labels)
        out[name] = {
            "auc": point,
            "auc_low": float(np.quantile(draws[name], 0.025)),
            "auc_high": float(np.quantile(draws[name], 0.975)),
            "minus_pooled": point - roc_auc(scores[reference], labels),
            "minus_pooled_low": float(np.quantile(diffs[name], 0.025)),
            "minus_pooled_high": float(np.quantile(diffs[name], 0.975)),
        }
    return out


def per_round_cost(metrics: dict[str, Any]) -> dict[str, float]:
    rounds = metrics["rounds"]
    seconds = [r["seconds"] for r in rounds]
    per_hospital = [
        b["to_hospital"] + b["from_hospital"] for r in rounds for b in r["payload_bytes"].values()
    ]
    return {
        "seconds_per_round": float(np.mean(seconds)),
        "bytes_per_round_per_hospital": float(np.mean(per_hospital)) if per_hospital else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=4)
    parser.add_argument("--images-per-hospital", type=int, default=300)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--local-epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--augmentation", default="mild", choices=("basic", "robust", "mild"))
    parser.add_argument("--server-momentum", type=float, default=0.7, help="FedAvgM's beta")
    parser.add_argument("--keep-epoch", default="last", choices=("best", "last"))
    parser.add_argument("--secagg-rounds", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-federated")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(1)
    started = time.perf_counter()
    load_before = os.getloadavg()

    data = args.workdir / "data"
    folders = []
    for i in range(args.hospitals):
        folder = data / f"hospital-{i + 1}"
        if not (folder / "dataset.json").is_file():
            generate_site(folder, site_profile(i), count=args.images_per_hospital, seed=700 + i)
        folders.append(folder)
    eval_dir = data / "eval"
    if not (eval_dir / "dataset.json").is_file():
        generate_eval(eval_dir, count=args.eval_images, seed=799)
    run = RunConfig(
        rounds=args.rounds, local_epochs=args.local_epochs, lr=args.lr, seed=args.seed, min_hospitals=2,
        augmentation=args.augmentation, round_timeout_s=900.0, eval_dir=str(eval_dir.resolve()),
        server_momentum=args.server_momentum, keep_epoch=args.keep_epoch,
    )  # fmt: skip
    arch = run.architecture()
    eval_set = ImageFolder(eval_dir, Preprocessing(arch.image_size))
    labels = eval_set.labels.numpy()
    sites = [
        load_site(f, arch, calibration_fraction=run.calibration_fraction, seed=run.seed)
        for f in folders
    ]

    rows: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for i, site in enumerate(sites):
        t = time.perf_counter()
        rows[f"hospital-{i + 1} alone"] = central([site], run, eval_set)
        seconds[f"hospital-{i + 1} alone"] = time.perf_counter() - t
    t = time.perf_counter()
    rows["pooled (central)"] = central(sites, run, eval_set)
    seconds["pooled (central)"] = time.perf_counter() - t

    costs: dict[str, dict[str, float]] = {}
    outputs = args.workdir / "checkpoints"

    def federate(poisoned: bool, strategies: list[tuple[str, str, bool, int]]) -> None:
        hospitals = [
            LocalHospital(
                f"hospital-{i + 1}",
                f,
                simulate="scale-update" if poisoned and i == len(folders) - 1 else "none",
            )  # fmt: skip
            for i, f in enumerate(folders)
        ]
        name = "poisoned" if poisoned else "honest"
        with LocalFederation(args.workdir / f"federation-{name}", hospitals) as federation:
            for label, strategy, secagg, rounds in strategies:
                out = outputs / f"{label.replace(' ', '-').replace('+', 'plus')}.pth"
                t = time.perf_counter()
                metrics = federation.run(
                    replace(
                        run, strategy=strategy, secagg=secagg, rounds=rounds, out=str(out.resolve())
                    )
                )
                seconds[label] = time.perf_counter() - t
                costs[label] = per_round_cost(metrics)
                if not secagg:  # SecAgg+ runs fewer rounds: it is measured for its cost
                    rows[label] = federated_logits(out, eval_set)
                log.info("%s: %s", label, costs[label])

    # The two federations run side by side: a round is mostly waiting (ClientApp start-up,
    # polling), so their rounds overlap; wall times per round are measured under that load.
    honest = threading.Thread(
        target=federate,
        args=(
            False,
            [
                ("FedAvg", "fedavg", False, args.rounds),
                ("FedMedian", "fedmedian", False, args.rounds),
                ("FedAvg + SecAgg+", "fedavg", True, args.secagg_rounds),
            ],
        ),
    )
    poisoned = threading.Thread(
        target=federate,
        args=(
            True,
            [
                ("FedAvg, 1 poisoned (x10)", "fedavg", False, args.rounds),
                ("FedMedian, 1 poisoned (x10)", "fedmedian", False, args.rounds),
            ],
        ),
    )
    for thread in (honest, poisoned):
        thread.start()
    for thread in (honest, poisoned):
        thread.join()
    missing = [
        r
        for r in ("FedAvg", "FedMedian", "FedAvg, 1 poisoned (x10)", "FedMedian, 1 poisoned (x10)")
        if r not in rows
    ]
    if missing:
        raise SystemExit(f"federated runs failed: {missing} (logs in {args.workdir})")

    # A model whose outputs are not finite (the x10 update can drive a BatchNorm variance
    # negative) cannot rank anything: it is scored as a constant (AUC 0.5, every case "no").
    broken = {name: int((~np.isfinite(logits)).any(axis=1).sum()) for name, logits in rows.items()}
    rows = {
        name: np.zeros_like(logits) if broken[name] else logits for name, logits in rows.items()
    }
    aucs = paired_auc(rows, labels, "pooled (central)", args.resamples, args.seed)
    results = []
    for name, logits in rows.items():
        report = classification_report(logits, labels, 1.0)
        results.append(
            {
                "row": name,
                "non_finite_outputs": broken[name],
                **aucs[name],
                "sensitivity": report.sensitivity,
                "specificity": report.specificity,
                "ece": report.ece_before,
                "seconds": round(seconds[name], 1),
                **costs.get(name, {}),
            }
        )
    payload = {
        "setting": {
            "hospitals": args.hospitals,
            "images_per_hospital": args.images_per_hospital,
            "eval_images": args.eval_images,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "central_epochs": args.rounds * args.local_epochs,
            "lr": args.lr,
            "lr_schedule": run.lr_schedule,
            "augmentation": args.augmentation,
            "server_momentum": run.server_momentum,
            "keep_epoch": run.keep_epoch,
            "secagg_rounds": args.secagg_rounds,
            "backbone": arch.backbone,
            "image_size": arch.image_size,
            "bootstrap_resamples": args.resamples,
            "poisoning": "the last hospital sends global + 10 x (its local change)",
        },
        "rows": results,
        "goals": goals(results),
        "costs": costs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "federated.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = render(payload)
    (args.out / "federated.md").write_text(table)
    print(table)
    return 0


def goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three goals, each with the figures it is judged on."""
    by = {r["row"]: r for r in results}
    alone = max((r for r in results if r["row"].endswith(" alone")), key=lambda r: r["auc"])
    fed = [by["FedAvg"], by["FedMedian"]]
    loss = {s: by[s]["auc"] - by[f"{s}, 1 poisoned (x10)"]["auc"] for s in ("FedAvg", "FedMedian")}
    return {
        "within_0.02_of_pooled": {
            r["row"]: {"minus_pooled": r["minus_pooled"], "met": r["minus_pooled"] >= -0.02}
            for r in fed
        },
        "above_best_single_hospital": {
            "best_alone": alone["row"],
            "best_alone_auc": alone["auc"],
            **{r["row"]: r["auc"] > alone["auc"] for r in fed},
        },
        "fedmedian_loses_less_under_poisoning": {
            "auc_lost": loss,
            "met": loss["FedMedian"] < loss["FedAvg"],
        },
    }


def render(payload: dict[str, Any]) -> str:
    s = payload["setting"]
    lines = [
        f"{s['hospitals']} hospitals x {s['images_per_hospital']} generated images, "
        f"{s['backbone']} {s['image_size']} px, {s['rounds']} rounds x {s['local_epochs']} local "
        f"epochs (central rows: {s['central_epochs']} epochs), Adam lr {s['lr']:g} "
        f"({s['lr_schedule']} over the run), {s['augmentation']} augmentation, "
        f"server momentum {s.get('server_momentum', 0.0):g}, {s.get('keep_epoch', 'best')} local epoch kept, "
        f"eval: {s['eval_images']} images; "
        f"AUC with paired-bootstrap 95 % CI ({s['bootstrap_resamples']} resamples).",
        "",
        "| row | AUC [95 % CI] | AUC - pooled [95 % CI] | sensitivity | specificity | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        note = (
            f" (outputs NaN on {r['non_finite_outputs']} images)" if r["non_finite_outputs"] else ""
        )
        lines.append(
            f"| {r['row']}{note} | {r['auc']:.3f} [{r['auc_low']:.3f}, {r['auc_high']:.3f}] "
            f"| {r['minus_pooled']:+.3f} [{r['minus_pooled_low']:+.3f}, {r['minus_pooled_high']:+.3f}] "
            f"| {r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['ece']:.3f} |"
        )
    lines += ["", "| run | s/round | payload bytes/round/hospital |", "|---|---|---|"]
    for name, c in payload["costs"].items():
        lines.append(
            f"| {name} | {c['seconds_per_round']:.1f} | {c['bytes_per_round_per_hospital'] / 1e6:.2f} MB |"
        )
    g = payload["goals"]
    near, above = g["within_0.02_of_pooled"], g["above_best_single_hospital"]
    poison = g["fedmedian_loses_less_under_poisoning"]
    lines += [
        "",
        "Goals: "
        + "; ".join(
            f"{name} {v['minus_pooled']:+.3f} from pooled ({'met' if v['met'] else 'not met'})"
            for name, v in near.items()
        )
        + f"; best single hospital {above['best_alone']} {above['best_alone_auc']:.3f}, "
        + ", ".join(
            f"{name} {'above' if above[name] else 'not above'}" for name in ("FedAvg", "FedMedian")
        )
        + f"; AUC lost to the poisoned hospital: FedAvg {poison['auc_lost']['FedAvg']:.3f}, "
        f"FedMedian {poison['auc_lost']['FedMedian']:.3f} "
        f"({'met' if poison['met'] else 'not met'}).",
    ]
    m = payload["machine"]
    lines += [
        "",
        f"{m['cpus']} CPUs, load average {m['load_average_before'][0]:.1f} before, "
        f"{m['load_average_after'][0]:.1f} after; total {payload['seconds_total']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
