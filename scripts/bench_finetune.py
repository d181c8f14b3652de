"""Benchmark: one encrypted SGD step of the served LeNet (models.encrypted_training), against
the same step in plaintext and CrypTen's own training used the plain way, in the same run;
and ResNet18's head-only fine-tuning (features once per case, then the last layer's steps).

Not a test. Writes ``docs/bench/finetune.json`` and ``docs/bench/finetune.md``.

    .venv/bin/python scripts/bench_finetune.py [--batch 8] [--reps 10]    # about 8 minutes
        [--part steps|shifted|all] [--variant profile --cases 300 --epsilon 3 --repeats 3]

ResNet18 (``--head-backbone``, ``--head-size`` 128): its penultimate features under MPC,
computed once per case (``models.encrypted_training.features_once``), and then one DP step of
its last layer on a pool of ``--head-pool`` cases' shared features, each drawn with
probability batch / pool, the draw and the labels secret-shared
(``encrypted_head_step``); the plaintext columns are the same computations in torch.

``--part steps`` or ``--part shifted`` measures one part and keeps the other from the last
report (saying when it was measured).

Part ``shifted`` (needs ``data/seed``): a hospital whose scanner shows brains as the
``profile`` near shift does (``training.synthetic.shifts.generate_hospital``); its images
are settled by a simulated panel of three doctors of known accuracy, cases the served model
flags unfamiliar are left out, and ``python -m training.encrypted_finetune`` (its defaults)
fine-tunes ``models/lenet.pth`` on the rest, ``--repeats`` times (DP noise differs). Reported:
AUC on the hospital's own eval images before and after (paired bootstrap), and the gate's
verdict on the owner's eval set.

Ours, without and with DP (per-image clipping and party 0's noise): the serving program
itself (``models.encrypted.forward``) with CrypTen's autograd, the logistic loss of the logit
difference, one opening of the batch gradient to party 1 (``models/lenet.pth`` when
present, else fresh weights: the cost does not depend on them).
The baseline runs ``../shared/bench/crypten_baseline.py``'s max-pool ReLU LeNet through
``crypten.nn.from_pytorch``, encrypted by party 1, trained with ``crypten.nn``'s
cross-entropy, ``backward`` and ``update_parameters`` (CrypTen's tutorial way) in a child
process that loads that file for its network and its patches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import benchmark_checkpoint, load_checkpoint  # noqa: E402
from models.encrypted import fold  # noqa: E402
from models.encrypted_training import DPStep, plaintext_step  # noqa: E402
from models.mpc import run_parties  # noqa: E402
from models.nets import Architecture  # noqa: E402

BASELINE = ROOT.parent / "shared" / "bench" / "crypten_baseline.py"
OUT = ROOT / "docs" / "bench"
LR = 0.01

_BASELINE_STEP = r"""
import json, statistics, sys, time, importlib.util
path, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.argv = [path, "lenet", "64", str(batch), str(reps)]
spec = importlib.util.spec_from_file_location("crypten_baseline", path)
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)  # its patches and its network; its run() is not called
import torch, crypten, crypten.mpc as mpc, crypten.communicator as comm

@mpc.run_multiprocess(world_size=2)
def train():
    torch.set_num_threads(1)
    crypten.cfg.communicator.verbose = True
    model = base.build("lenet", 64).train()
    enc = crypten.nn.from_pytorch(model, torch.empty(1, 1, 64, 64)).encrypt(src=1)
    enc.train()
    loss_fn = crypten.nn.CrossEntropyLoss()
    x = crypten.cryptensor(torch.randn(batch, 1, 64, 64), src=0)
    labels = torch.tensor([i % 2 for i in range(batch)])
    y = crypten.cryptensor(torch.nn.functional.one_hot(labels, 2).float(), src=0)
    times, rounds, sent = [], [], []
    for rep in range(reps + 1):
        comm.get().reset_communication_stats()
        t = time.perf_counter()
        enc.zero_grad()
        loss = loss_fn(enc(x), y)
        loss.backward()
        enc.update_parameters(0.01)
        if rep:  # the first step warms up
            times.append(time.perf_counter() - t)
            stats = comm.get().get_communication_stats()
            rounds.append(stats["rounds"]); sent.append(stats["bytes"])
    if comm.get().get_rank() == 0:
        print(json.dumps({"s_per_step": statistics.median(times), "rounds": statistics.median(rounds),
                          "bytes": statistics.median(sent)}), flush=True)

train()
"""


def _encrypted_party(
    rank: int,
    params: dict[str, torch.Tensor] | None,
    arch: Architecture,
    batch: int,
    reps: int,
    dp: DPStep | None,
) -> dict[str, Any]:
    from models.crypten_compat import load_crypten
    from models.encrypted_training import encrypted_step

    crypten = load_crypten()
    crypten.cfg.communicator.verbose = True
    comm = crypten.communicator.get()
    size = arch.image_size
    images = torch.randn(batch, 1, size, size) if rank == 0 else None
    labels = torch.tensor([i % 2 for i in range(batch)], dtype=torch.float32)
    mine = params if rank == 1 else None
    times: list[float] = []
    rounds: list[float] = []
    sent: list[float] = []
    for rep in range(reps + 1):
        comm.reset_communication_stats()
        started = time.perf_counter()
        updated = encrypted_step(crypten, rank, arch, mine, images, labels, LR, dp=dp)
        if rep:  # the first step warms up
            times.append(time.perf_counter() - started)
            stats = comm.get_communication_stats()
            rounds.append(stats["rounds"])
            sent.append(stats["bytes"])
        mine = updated if rank == 1 else None
    return {
        "s_per_step": statistics.median(times),
        "all_s": [round(t, 4) for t in times],
        "rounds": statistics.median(rounds),
        "bytes": statistics.median(sent),
    }


def ours(batch: int, reps: int, dp: DPStep | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        path, weights = benchmark_checkpoint(ROOT / "models", "lenet", Path(workdir))
        checkpoint = load_checkpoint(path)
        arch = checkpoint.architecture
        params = fold(checkpoint.model(), arch, checkpoint.temperature)
    encrypted = run_parties(_encrypted_party, dict(params), arch, batch, reps, dp)[0]
    torch.set_num_threads(1)
    images = torch.randn(batch, 1, arch.image_size, arch.image_size)
    labels = torch.tensor([i % 2 for i in range(batch)], dtype=torch.float32)
    clip = None if dp is None else dp.clip
    plaintext_step(arch, params, images, labels, LR, clip)
    plain = []
    for _ in range(reps):
        started = time.perf_counter()
        plaintext_step(arch, params, images, labels, LR, clip)  # DP: clipping, not the noise
        plain.append(time.perf_counter() - started)
    return {
        "system": "crypto-doctor",
        "model": f"LeNet ({arch.activation}, avg pool), whole network"
        + ("" if dp is None else f", DP (C {dp.clip:g}, sigma {dp.noise_multiplier:g})"),
        "weights": weights,
        "batch": batch,
        "enc_s_per_step": encrypted["s_per_step"],
        "enc_all_s": encrypted["all_s"],
        "plain_s_per_step": statistics.median(plain),
        "rounds": encrypted["rounds"],
        "mb_per_step": encrypted["bytes"] / 1e6,
    }


def _head_party(
    rank: int,
    params: dict[str, torch.Tensor] | None,
    arch: Architecture,
    pool: int,
    batch: int,
    reps: int,
    feature_cases: int,
) -> dict[str, Any]:
    from models.crypten_compat import load_crypten
    from models.encrypted_training import encrypted_head_step, features_once

    crypten = load_crypten()
    crypten.cfg.communicator.verbose = True
    comm = crypten.communicator.get()
    size = arch.image_size
    mine = params if rank == 1 else None
    images = torch.randn(feature_cases, 1, size, size) if rank == 0 else None
    comm.reset_communication_stats()
    started = time.perf_counter()
    shared = features_once(crypten, rank, arch, mine, images, feature_cases, feature_cases)
    once = {"s": time.perf_counter() - started, **comm.get_communication_stats()}
    width = int(shared.shape[1])
    # the pool's features: shares of party 0's values (the step's cost does not depend on them)
    features = crypten.cryptensor(
        torch.rand(pool, width) if rank == 0 else torch.empty(pool, width), src=0
    )
    labels = torch.tensor([i % 2 for i in range(pool)], dtype=torch.float32)
    draw = torch.Generator().manual_seed(0)
    dp = DPStep(clip=1.0, noise_multiplier=1.0)
    times: list[float] = []
    rounds: list[float] = []
    sent: list[float] = []
    for rep in range(reps + 1):
        chosen = torch.rand(pool, generator=draw) < batch / pool
        comm.reset_communication_stats()
        started = time.perf_counter()
        updated = encrypted_head_step(
            crypten, rank, arch, mine, features, chosen if rank == 0 else None,
            labels if rank == 0 else None, LR, dp, mean_over=float(batch),
        )  # fmt: skip
        if rep:  # the first step warms up
            times.append(time.perf_counter() - started)
            stats = comm.get_communication_stats()
            rounds.append(stats["rounds"])
            sent.append(stats["bytes"])
        mine = updated if rank == 1 else None
    return {
        "features_s_per_case": once["s"] / feature_cases,
        "features_rounds": once["rounds"],
        "features_bytes_per_case": once["bytes"] / feature_cases,
        "s_per_step": statistics.median(times),
        "all_s": [round(t, 4) for t in times],
        "rounds": statistics.median(rounds),
        "bytes": statistics.median(sent),
        "width": width,
    }


def resnet_head(
    backbone: str, size: int, pool: int, batch: int, reps: int, feature_cases: int
) -> list[dict[str, Any]]:
    """ResNet18's fine-tuning: its features once per case, then the last layer's DP step on
    a pool of ``pool`` cases' shared features (each case drawn with probability batch/pool)."""
    from models.encrypted import penultimate
    from models.encrypted_training import plaintext_head_step

    with tempfile.TemporaryDirectory() as workdir:
        path, weights = benchmark_checkpoint(ROOT / "models", backbone, Path(workdir), size)
        checkpoint = load_checkpoint(path)
        arch = checkpoint.architecture
        params = fold(checkpoint.model(), arch, checkpoint.temperature)
    measured = run_parties(_head_party, dict(params), arch, pool, batch, reps, feature_cases)[0]
    torch.set_num_threads(1)
    images = torch.randn(feature_cases, 1, arch.image_size, arch.image_size)
    started = time.perf_counter()
    with torch.no_grad():
        penultimate(arch, params, images)
    plain_features = (time.perf_counter() - started) / feature_cases
    features = torch.rand(pool, measured["width"])
    labels = torch.tensor([i % 2 for i in range(pool)], dtype=torch.float32)
    chosen = torch.rand(pool) < batch / pool
    plain = []
    for _ in range(reps):
        started = time.perf_counter()
        plaintext_head_step(arch, params, features, chosen, labels, LR, 1.0, float(batch))
        plain.append(time.perf_counter() - started)
    name = f"{backbone} {arch.image_size}²"
    return [
        {
            "system": "crypto-doctor",
            "model": f"{name}, its features once per case (s, MB per case; rounds for "
            f"{feature_cases} cases at once)",
            "weights": weights,
            "batch": feature_cases,
            "enc_s_per_step": measured["features_s_per_case"],
            "plain_s_per_step": plain_features,
            "rounds": measured["features_rounds"],
            "mb_per_step": measured["features_bytes_per_case"] / 1e6,
        },
        {
            "system": "crypto-doctor",
            "model": f"{name}, last layer on {pool} cases' shared features, DP (C 1, sigma 1), "
            "the draw hidden",
            "weights": weights,
            "batch": batch,
            "enc_s_per_step": measured["s_per_step"],
            "enc_all_s": measured["all_s"],
            "plain_s_per_step": statistics.median(plain),
            "rounds": measured["rounds"],
            "mb_per_step": measured["bytes"] / 1e6,
        },
    ]


def baseline(batch: int, reps: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "system": "CrypTen from_pytorch (plain way)",
        "model": "LeNet (ReLU, max pool), whole network",
        "weights": "random init",
        "batch": batch,
    }
    if not BASELINE.exists():
        return row | {"error": f"{BASELINE} not found"}
    result = subprocess.run(
        [sys.executable, "-c", _BASELINE_STEP, str(BASELINE), str(batch), str(reps)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith("{")]
    if not lines:
        return row | {"error": result.stderr[-800:]}
    measured = json.loads(lines[-1])
    return row | {
        "enc_s_per_step": measured["s_per_step"],
        "rounds": measured["rounds"],
        "mb_per_step": measured["bytes"] / 1e6,
    }


# ---------------------------------------------------------------- a shifted hospital


def settled_cases(hospital: Path, out: Path, parent: Path, accuracy: float, seed: int) -> dict:
    """The hospital's training images as settled cases: a panel of three simulated doctors,
    each right with probability ``accuracy``, decides by majority; cases the parent flags
    unfamiliar are left out (they may not teach the model), as the clinic would."""
    import shutil

    import numpy as np

    from models.preprocessing import Preprocessing
    from training.data import ImageFolder
    from training.ood import detector_features

    checkpoint = load_checkpoint(parent)
    data = ImageFolder(hospital / "train", Preprocessing(checkpoint.architecture.image_size))
    flags = torch.zeros(len(data.samples), dtype=torch.bool)
    if checkpoint.detector is not None:
        features = detector_features(
            checkpoint.model(), checkpoint.architecture, checkpoint.temperature, data.images,
            checkpoint.detector.features,
        )  # fmt: skip
        flags = checkpoint.detector.flags(features)
    votes = np.random.default_rng(seed).random((len(data.samples), 3)) < accuracy
    right = votes.sum(1) >= 2
    for label in ("yes", "no"):
        (out / label).mkdir(parents=True, exist_ok=True)
    kept = 0
    for sample, flagged, correct in zip(data.samples, flags.tolist(), right.tolist(), strict=True):
        if flagged:
            continue
        label = sample.label if correct else 1 - sample.label
        shutil.copy(sample.path, out / ("yes" if label else "no") / sample.path.name)
        kept += 1
    return {"images": len(data.samples), "flagged_left_out": int(flags.sum()), "cases": kept,
            "panel_accuracy": float(right[~flags.numpy()].mean())}  # fmt: skip


def shifted(args: argparse.Namespace) -> dict[str, Any]:
    from training.compare import logit_differences, paired_bootstrap_auc
    from training.encrypted_finetune import main as finetune
    from training.synthetic.shifts import generate_hospital

    parent = ROOT / "models" / "lenet.pth"
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        hospital = generate_hospital(
            work / "hospital", args.variant, train=args.cases, eval=args.hospital_eval, seed=3
        )
        cases = settled_cases(hospital, work / "cases", parent, 0.85, seed=0)
        before, labels = logit_differences(parent, hospital / "eval")
        runs = []
        for repeat in range(args.repeats):
            out = work / f"candidate{repeat}.pth"
            code = finetune([
                "--checkpoint", str(parent), "--cases-dir", str(work / "cases"),
                "--owner-dir", str(ROOT / "data/seed/train"),
                "--eval-dir", str(ROOT / "data/seed/eval"), "--out", str(out),
                "--dp-epsilon", str(args.epsilon),
            ])  # fmt: skip
            record = json.loads(out.with_suffix(".provenance.json").read_text())
            after, _ = logit_differences(out, hospital / "eval")
            gain = paired_bootstrap_auc(before, after, labels, resamples=2000)
            runs.append({
                "promoted": code == 0, "reasons": record["gate"]["reasons"],
                "owner_eval_auc": [record["gate"]["auc"]["auc_a"], record["gate"]["auc"]["auc_b"]],
                "owner_eval_change_ci": [record["gate"]["auc"]["ci_low"],
                                         record["gate"]["auc"]["ci_high"]],
                "held_out": record["gate"].get("held_out"),
                "taught_by": record["taught_by"],
                "hospital_auc": [gain.auc_a, gain.auc_b],
                "hospital_change_ci": [gain.ci_low, gain.ci_high],
                "epsilon": record["differential_privacy"]["epsilon"],
                "settings": record["settings"],
            })  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
    return {"variant": args.variant, "hospital_eval_images": args.hospital_eval, **cases,
            "runs": runs}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['measured']} on {report['machine']}, two parties on loopback, one "
        f"thread each, TFP; load before {report['load_before']}, after {report['load_after']}; "
        f"medians of {report['reps']} steps after a warm-up step.",
    ]
    kept = report.get("kept_from_previous_run")
    if kept:
        lines.append(f"The {kept['part']} part is kept from the run of {kept['measured']}.")
    if report["rows"]:
        lines += [
            "",
            "| system | network | batch | s/step encrypted | s/step plaintext | rounds/step "
            "| MB/step |",
            "|---|---|---|---|---|---|---|",
        ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['system']} | {row['model']} | {row['batch']} | failed | | | |")
            continue
        plain = row.get("plain_s_per_step")
        lines.append(
            f"| {row['system']} | {row['model']} | {row['batch']} | {row['enc_s_per_step']:.3f} "
            f"| {'' if plain is None else f'{plain:.4f}'} | {row['rounds']:.0f} "
            f"| {row['mb_per_step']:.1f} |"
        )
    hospital = report.get("shifted")
    if hospital:
        lines += [
            "",
            f"**A shifted hospital** (near-shift variant `{hospital['variant']}`): "
            f"{hospital['images']} training images, {hospital['flagged_left_out']} flagged "
            f"unfamiliar by the parent and left out, {hospital['cases']} settled cases "
            f"(simulated panel of three, each right with p 0.85: majority right "
            f"{hospital['panel_accuracy']:.3f}), of which a fifth of each class is held out to "
            f"judge the candidate encrypted; AUC on {hospital['hospital_eval_images']} of "
            "the hospital's own eval images, on the held-out settled cases (encrypted, against "
            "the panel's labels) and on the owner's eval set (the gate's), paired-bootstrap "
            "95 % CI of each change:",
            "",
            "| run | ε | cases trained / held out | hospital AUC before → after [CI of change] "
            "| held-out settled cases, encrypted [CI] | owner eval AUC before → after [CI] "
            "| gate |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, run in enumerate(hospital["runs"], 1):
            (h0, h1), (hl, hh) = run["hospital_auc"], run["hospital_change_ci"]
            (o0, o1), (ol, oh) = run["owner_eval_auc"], run["owner_eval_change_ci"]
            held = run.get("held_out")
            judged = (
                "none held out" if not held else f"{held['auc_a']:.3f} → {held['auc_b']:.3f} "
                f"[{held['ci_low']:+.3f}, {held['ci_high']:+.3f}]"
            )  # fmt: skip
            taught = run.get("taught_by", {})
            split = f"{taught.get('settled_cases', '?')} / {taught.get('held_out_cases', 0)}"
            gate = "promoted" if run["promoted"] else "refused: " + "; ".join(run["reasons"])
            lines.append(
                f"| {i} | {run['epsilon']:.2f} | {split} | {h0:.3f} → {h1:.3f} "
                f"[{hl:+.3f}, {hh:+.3f}] | {judged} | {o0:.3f} → {o1:.3f} [{ol:+.3f}, {oh:+.3f}] "
                f"| {gate} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=OUT)
    parser.add_argument("--part", choices=("steps", "shifted", "all"), default="all")
    parser.add_argument("--head-backbone", default="resnet18",
                        help="the ResNet whose last layer learns (none: skip)")  # fmt: skip
    parser.add_argument("--head-size", type=int, default=128)
    parser.add_argument("--head-pool", type=int, default=64, help="cases whose features it has")
    parser.add_argument("--feature-cases", type=int, default=2, help="cases timed for features")
    parser.add_argument("--variant", default="profile", help="the hospital's near shift")
    parser.add_argument("--cases", type=int, default=300, help="the hospital's images")
    parser.add_argument("--hospital-eval", type=int, default=600)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3, help="fine-tuning runs (DP noise)")
    args = parser.parse_args(argv)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    if args.part in ("steps", "all"):
        for dp in (None, DPStep(clip=1.0, noise_multiplier=1.0)):
            rows.append(ours(args.batch, args.reps, dp))
            print(json.dumps(rows[-1]), flush=True)
        if not args.skip_baseline:
            rows.append(baseline(args.batch, args.reps))
            print(json.dumps(rows[-1]), flush=True)
        if args.head_backbone != "none":
            rows += resnet_head(args.head_backbone, args.head_size, args.head_pool, args.batch,
                                args.reps, args.feature_cases)  # fmt: skip
            print(json.dumps(rows[-2:]), flush=True)
    hospital = shifted(args) if args.part in ("shifted", "all") else None
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    measured = {"steps": now, "shifted": now}
    kept_from: dict[str, str] | None = None
    previous = args.out_dir / "finetune.json"
    if args.part != "all" and previous.exists():  # keep the part not measured this time
        kept = json.loads(previous.read_text())
        other = "shifted" if args.part == "steps" else "steps"
        measured[other] = kept.get(f"{other}_measured", kept["measured"])
        kept_from = {"part": other, "measured": measured[other]}
        rows = rows or kept.get("rows", [])
        hospital = hospital or kept.get("shifted")
    report = {
        "measured": now,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_before": load_before,
        "load_after": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "reps": args.reps,
        "rows": rows,
        "shifted": hospital,
        "steps_measured": measured["steps"],
        "shifted_measured": measured["shifted"],
        "kept_from_previous_run": kept_from,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out_dir / "finetune.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
