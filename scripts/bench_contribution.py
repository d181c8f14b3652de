"""Benchmark: what each hospital's data added, by exact Shapley, Monte Carlo and loss-delta tokens.

Not a test. Four generated hospitals as real processes (SuperLink + SuperNodes on 127.0.0.1):
``twin-a`` and ``twin-b`` hold identical data, ``free-rider`` sends the global model back
unchanged, ``flipper`` trains on flipped labels. Utility is the eval AUC on one common set of
2,000 generated images. Three federated runs (seeds 0, 1, 2) give the spread.

    .venv/bin/python scripts/bench_contribution.py          # ~20 min on 2 cores (quiet)

Writes ``docs/bench/contribution.json`` and ``docs/bench/contribution.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.nets import Architecture  # noqa: E402
from models.preprocessing import Preprocessing  # noqa: E402
from training.data import ImageFolder  # noqa: E402
from training.federated.contribution import (  # noqa: E402
    Utility,
    gtg_shapley,
    load_archive,
    loss_delta_tokens,
    measure,
    payment_shares,
    round_games,
)
from training.federated.local import LocalFederation, LocalHospital  # noqa: E402
from training.federated.outputs import FederatedPaths  # noqa: E402
from training.federated.protocol import RunConfig  # noqa: E402
from training.federated.sites import generate_eval, generate_site, site_profile  # noqa: E402

OUT = ROOT / "docs" / "bench"
NAMES = ("twin-a", "twin-b", "free-rider", "flipper")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-hospital", type=int, default=300)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--augmentation", default="mild", choices=("basic", "robust", "mild"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench-contribution")
    parser.add_argument(
        "--eval-dir", type=Path, default=None,
        help="an existing generated eval folder (default: generate one in the workdir)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--reuse", action="store_true",
        help="measure the seeds' federated runs already in the workdir instead of re-running them",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started, load_before = time.perf_counter(), os.getloadavg()
    data = args.workdir / "data"
    twin = data / "twin-a"
    if not (twin / "dataset.json").is_file():
        generate_site(twin, site_profile(0), count=args.images_per_hospital, seed=900)
    if not (data / "twin-b" / "dataset.json").is_file():
        shutil.rmtree(data / "twin-b", ignore_errors=True)
        shutil.copytree(twin, data / "twin-b")
    # The flipper's site must be one a model can learn from (profile D, large lesions): on
    # data nothing is learnt from (profile C alone stays at chance), flipped labels change
    # nothing either, and "ranks last" would be measured on noise.
    for name, index in (("free-rider", 1), ("flipper", 3)):
        if not (data / name / "dataset.json").is_file():
            generate_site(
                data / name, site_profile(index), count=args.images_per_hospital, seed=900 + index
            )
    eval_dir = args.eval_dir or data / "eval"
    if not (eval_dir / "dataset.json").is_file():
        generate_eval(eval_dir, count=args.eval_images, seed=999)
    hospitals = [
        LocalHospital("twin-a", data / "twin-a"),
        LocalHospital("twin-b", data / "twin-b"),
        LocalHospital("free-rider", data / "free-rider", simulate="free-ride"),
        LocalHospital("flipper", data / "flipper", simulate="flip-labels"),
    ]
    base = RunConfig(
        rounds=args.rounds, local_epochs=args.local_epochs, lr=args.lr, min_hospitals=2,
        augmentation=args.augmentation, round_timeout_s=900.0, eval_dir=str(eval_dir.resolve()),
    )  # fmt: skip
    runs: list[dict[str, Any]] = []
    with LocalFederation(args.workdir / "federation", hospitals) as federation:
        for seed in range(args.seeds):
            out = (args.workdir / "checkpoints" / f"seed-{seed}.pth").resolve()
            metrics_path = out.with_name(out.stem + ".metrics.json")
            if args.reuse and metrics_path.is_file():
                metrics = json.loads(metrics_path.read_text())
                federation_seconds = sum(r["seconds"] for r in metrics["rounds"])
            else:
                t = time.perf_counter()
                federation.run(replace(base, seed=seed, out=str(out)))
                federation_seconds = time.perf_counter() - t
            runs.append(_measure(out, seed, federation_seconds, args))
    payload = {
        "setting": {
            "hospitals": list(NAMES),
            "images_per_hospital": args.images_per_hospital,
            "eval_images": args.eval_images,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "lr": args.lr,
            "lr_schedule": base.lr_schedule,
            "augmentation": args.augmentation,
            "seeds": args.seeds,
            "permutations": args.permutations,
            "utility": "eval AUC; per round, the round's starting global model plus the FedAvg "
            "of the coalition's stored changes (GTG-Shapley), summed over rounds",
        },
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "contribution.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = render(payload)
    (args.out / "contribution.md").write_text(table)
    print(table)
    return 0


def _measure(
    out: Path, seed: int, federation_seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Exact (via ``measure``, as the royalties read it), Monte Carlo and loss-delta, each timed."""
    t = time.perf_counter()
    record = measure(out)
    measure_seconds = time.perf_counter() - t
    archive = load_archive(FederatedPaths.for_checkpoint(out).updates)
    provenance = json.loads(out.with_suffix(".provenance.json").read_text())
    arch = Architecture(**provenance["architecture"])
    ev = ImageFolder(Path(provenance["eval_data"]["dir"]), Preprocessing(arch.image_size))
    utility = Utility(arch, ev.images, ev.labels.numpy())
    t = time.perf_counter()
    mc, se = gtg_shapley(
        list(NAMES), round_games(archive, utility), permutations=args.permutations, seed=seed
    )
    mc_seconds = time.perf_counter() - t
    t = time.perf_counter()
    tokens = loss_delta_tokens(archive, utility)
    token_seconds = time.perf_counter() - t
    t = time.perf_counter()
    gtg_shapley(list(NAMES), round_games(archive, utility))
    exact_seconds = time.perf_counter() - t
    return {
        "seed": seed,
        "utility_all": record["utility_all"],
        "utility_none": record["utility_none"],
        "hospitals": record["hospitals"],
        "monte_carlo": {"values": mc, "se": se},
        "loss_delta_tokens": tokens,
        "seconds": {
            "federation": round(federation_seconds, 1),
            "measure_total": round(measure_seconds, 2),
            "exact_shapley": round(exact_seconds, 2),
            "monte_carlo": round(mc_seconds, 2),
            "loss_delta": round(token_seconds, 2),
        },
    }


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):+.4f} [{min(values):+.4f}, {max(values):+.4f}]"


def render(payload: dict[str, Any]) -> str:
    s, runs = payload["setting"], payload["runs"]
    lines = [
        f"4 hospitals x {s['images_per_hospital']} images, {s['rounds']} rounds x "
        f"{s['local_epochs']} local epochs (Adam lr {s.get('lr', 3e-3):g}, "
        f"{s.get('lr_schedule', 'constant')} over the run, {s.get('augmentation', 'robust')} "
        f"augmentation), utility: eval AUC on {s['eval_images']} images; mean "
        f"[min, max] over {s['seeds']} seeds. Shapley per round (GTG), summed over rounds; "
        f"Monte Carlo: {s['permutations']} permutations per round.",
        "",
        "| hospital | exact Shapley | Monte Carlo Shapley | loss-delta tokens | payment share (exact) | share by loss-delta |",
        "|---|---|---|---|---|---|",
    ]
    for name in NAMES:
        exact = [r["hospitals"][name]["shapley"] for r in runs]
        mc = [r["monte_carlo"]["values"][name] for r in runs]
        tokens = [r["loss_delta_tokens"][name] for r in runs]
        shares = [r["hospitals"][name]["share"] for r in runs]
        token_shares = [  # the same rule as payments: floor at 0, else by data size
            payment_shares(
                r["loss_delta_tokens"],
                {h: v["data_size"] for h, v in r["hospitals"].items()},
            )[name]
            for r in runs
        ]
        lines.append(
            f"| {name} | {_spread(exact)} | {_spread(mc)} | {_spread(tokens)} "
            f"| {np.mean(shares):.3f} | {np.mean(token_shares):.3f} |"
        )
    secs = {k: np.mean([r["seconds"][k] for r in runs]) for k in runs[0]["seconds"]}
    lines += [
        "",
        "Shares are means over the seeds, by the payment rule (negative values floored at 0 "
        "and the rest renormalised; if no hospital is positive, by data size). Seeds where "
        f"no hospital's loss-delta tokens were positive: {sum(all(v <= 0 for v in r['loss_delta_tokens'].values()) for r in runs)} of {len(runs)}.",
        "",
        f"AUC with all four: {np.mean([r['utility_all'] for r in runs]):.3f}; with none (the "
        f"initial model): {np.mean([r['utility_none'] for r in runs]):.3f}.",
        f"Seconds per run (mean): federation {secs['federation']:.0f}, exact Shapley (16 "
        f"coalitions x {s['rounds']} rounds) {secs['exact_shapley']:.1f}, Monte Carlo {secs['monte_carlo']:.1f}, "
        f"loss-delta {secs['loss_delta']:.1f}. {payload['machine']['cpus']} CPUs, load "
        f"{payload['machine']['load_before'][0]:.1f} before, {payload['machine']['load_after'][0]:.1f} after.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
