"""Benchmark: how well the model knows what it does not know, and what the bit costs encrypted.

    python scripts/bench_ood.py [--model models/lenet.pth] [--baseline runs/b18/robust/lenet.pth]
        [--data data/seed] [--shifts data/shifts] [--rtt-ms 10,50] [--reps 60]

Needs the training data the model was trained on (``--data``, ``<data>/train`` and
``<data>/eval``) and the shift sets (``python scripts/generate_shifts.py --out data/shifts``).

1. **Choosing the detector (dev shift sets only).** Every candidate is fitted on the model's
   own fit split (the split its training run used), and scored as AUROC against in-distribution
   eval on the *dev* near, orientation and far sets: energy (plaintext only), feature norm and
   Mahalanobis (class-conditional and pooled) on the conv, conv + Laplacian energy
   (``conv_laplacian``) or the penultimate features.
2. **Final figures (held-out shift sets, never used to choose).** For the model's own detector
   (the one in its checkpoint, threshold chosen on its calibration split): AUROC per shift and
   per variant, the flagged fraction at the deployed threshold and at the threshold flagging
   <= 5 % of in-distribution eval.
3. **Robustness.** Accuracy and AUC on the labelled shifted sets (near, orientation) and on
   in-distribution eval, for the model and for ``--baseline`` (the same recipe trained with
   ``--augmentation robust``).
4. **Encrypted cost.** Two real parties on loopback (and, as root, across two network
   namespaces with 10 and 50 ms RTT, ``scripts/twohosts.py``): s/img, rounds and MB with and
   without the unfamiliarity bit, same run, batch 1 and 8.

Writes ``docs/bench/ood.json`` and ``docs/bench/ood.md``. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from models.preprocessing import Preprocessing  # noqa: E402
from models.unfamiliarity import threshold_for_rate  # noqa: E402
from training.data import ImageFolder, stratified_split  # noqa: E402
from training.metrics import roc_auc  # noqa: E402
from training.ood import (  # noqa: E402
    Outputs,
    ShiftSet,
    fit_detector,
    load_shift_set,
    model_outputs,
    score,
    unfamiliarity_auroc,
)
from training.synthetic.shifts import SHIFTS  # noqa: E402

CANDIDATES = (
    ("energy", "penultimate"),
    ("feature_norm", "penultimate"),
    ("feature_norm", "conv"),
    ("mahalanobis", "penultimate"),
    ("pooled_mahalanobis", "penultimate"),
    ("mahalanobis", "conv"),
    ("pooled_mahalanobis", "conv"),
    ("mahalanobis", "conv_laplacian"),
    ("pooled_mahalanobis", "conv_laplacian"),
)
PORT = 29911


# ------------------------------------------------------------------------- plaintext figures


def _training_split(checkpoint_path: Path, data: Path, pre: Preprocessing) -> dict[str, Any]:
    """The fit and calibration images of the model's own training run (same split, same seed)."""
    metrics = json.loads(checkpoint_path.with_suffix("").with_suffix(".metrics.json").read_text())
    settings = metrics["settings"]
    train = ImageFolder(data / "train", pre)
    keep, held = stratified_split(
        train.labels, float(settings["calibration_fraction"]), int(settings["seed"])
    )
    return {
        "fit": (train.images[keep], train.labels[keep]),
        "calibration": (train.images[held], train.labels[held]),
        "settings": settings,
    }


def choose_detector(
    checkpoint: Checkpoint,
    split: dict[str, Any],
    eval_images: torch.Tensor,
    dev: dict[str, ShiftSet],
) -> list[dict[str, Any]]:
    rows = []
    fit_images, fit_labels = split["fit"]
    for method, features in CANDIDATES:
        fit_out = model_outputs(checkpoint, fit_images, features)
        calib_out = model_outputs(checkpoint, split["calibration"][0], features)
        eval_out = model_outputs(checkpoint, eval_images, features)
        detector = None
        if method != "energy":
            detector = fit_detector(method, features, fit_out, fit_labels, calib_out, 0.05)
        familiar = score(method, detector, eval_out, checkpoint.temperature)
        row: dict[str, Any] = {"method": method, "features": features}
        for name, shift in dev.items():
            shifted = score(
                method, detector, model_outputs(checkpoint, shift.images, features),
                checkpoint.temperature,
            )  # fmt: skip
            row[name] = unfamiliarity_auroc(familiar, shifted)
        row["near_orientation_mean"] = (row["near"] + row["orientation"]) / 2
        rows.append(row)
        print(f"[bench_ood] dev {method:>18} {features:>11}: " + ", ".join(
            f"{n} {row[n]:.3f}" for n in dev), flush=True)  # fmt: skip
    return rows


def heldout_figures(
    checkpoint: Checkpoint, eval_out: Outputs, heldout: dict[str, ShiftSet]
) -> list[dict[str, Any]]:
    detector = checkpoint.detector
    assert detector is not None
    familiar = detector.scores(eval_out.features)
    five_percent = threshold_for_rate(familiar, 0.05)
    rows = [
        {
            "shift": "in-distribution eval",
            "images": len(familiar),
            "auroc": None,
            "flagged_deployed": float((familiar > detector.threshold).float().mean()),
            "flagged_at_5pct": float((familiar > five_percent).float().mean()),
            "variants": {},
        }
    ]
    for name, shift in heldout.items():
        out = model_outputs(checkpoint, shift.images, detector.features)
        scores = detector.scores(out.features)
        variants = {}
        for variant in sorted(set(shift.variants)):
            idx = [i for i, v in enumerate(shift.variants) if v == variant]
            variants[variant] = unfamiliarity_auroc(familiar, scores[idx])
        rows.append(
            {
                "shift": name,
                "images": len(scores),
                "auroc": unfamiliarity_auroc(familiar, scores),
                "flagged_deployed": float((scores > detector.threshold).float().mean()),
                "flagged_at_5pct": float((scores > five_percent).float().mean()),
                "variants": variants,
            }
        )
    return rows


def accuracy(
    checkpoint: Checkpoint, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    out = model_outputs(checkpoint, images, "penultimate")
    d = out.differences
    predicted = (d > 0).long()
    p_tumor = torch.sigmoid(d.double())
    screened = (p_tumor >= checkpoint.decision_threshold).long()
    return {
        "accuracy": float((predicted == labels).float().mean()),
        "accuracy_at_operating_point": float((screened == labels).float().mean()),
        "auc": roc_auc(p_tumor.numpy(), labels.numpy()),
    }


def robustness(
    models: dict[str, Checkpoint],
    eval_set: tuple[torch.Tensor, torch.Tensor],
    heldout: dict[str, ShiftSet],
) -> list[dict[str, Any]]:
    rows = []
    sets = {"in-distribution eval": eval_set}
    for name, shift in heldout.items():
        if shift.labelled.any():
            sets[name] = (shift.images[shift.labelled], shift.labels[shift.labelled])
    for set_name, (images, labels) in sets.items():
        row: dict[str, Any] = {"set": set_name, "images": len(labels)}
        for model_name, checkpoint in models.items():
            row[model_name] = accuracy(checkpoint, images, labels)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------- encrypted cost


def _interleaved(classifier: Any, batch: int, reps: int) -> dict[str, Any]:
    """Without and with the bit, alternately (so both see the same machine load); medians."""
    import statistics

    from models.inference import measure_forward

    runs: dict[str, list[Any]] = {"without": [], "with": []}
    for _ in range(reps):
        runs["without"].append(measure_forward(classifier, batch, 1))
        runs["with"].append(measure_forward(classifier, batch, 1, unfamiliarity=True))
    return {
        name: {
            "seconds": statistics.median(c.seconds for c in costs),
            "all_seconds": [c.seconds for c in costs],
            "rounds": statistics.median(c.rounds for c in costs),
            "bytes": statistics.median(c.bytes for c in costs),
        }
        for name, costs in runs.items()
    }


def _cost_party(rank: int, checkpoint: str, batch: int, reps: int) -> dict[str, Any]:
    from models.crypten_compat import load_crypten
    from models.inference import EncryptedClassifier

    crypten = load_crypten()
    return _interleaved(EncryptedClassifier.for_party(crypten, rank, checkpoint), batch, reps)


def loopback_costs(checkpoint: Path, batches: list[int], reps: int) -> list[dict[str, Any]]:
    from models.mpc import run_parties

    rows = []
    for batch in batches:
        result = run_parties(_cost_party, str(checkpoint), batch, reps)[0]
        rows.append({"link": "loopback", "rtt_ms": 0.0, "batch": batch, **result})
        _print_cost(rows[-1])
    return rows


def _netns_party(args: argparse.Namespace) -> int:
    from models.inference import EncryptedClassifier
    from models.mpc import PartyConfig, init_party

    crypten = init_party(
        PartyConfig(rank=args.party, master_port=args.master_port, master_addr=args.master_addr)
    )
    try:
        classifier = EncryptedClassifier.for_party(crypten, args.party, args.checkpoint_path)
        result = _interleaved(classifier, args.batch, args.reps)
    finally:
        crypten.uninit()
    print(json.dumps(result))
    return 0


def netns_costs(checkpoint: Path, rtts: list[float], reps: int) -> list[dict[str, Any]]:
    """Both parties in their own network namespace, ``tc netem`` (or a delay line) between."""
    from scripts.twohosts import ADDR, TwoHosts

    rows = []
    hosts = TwoHosts()
    port = PORT
    try:
        hosts.open()
        for rtt in rtts:
            hosts.set_rtt(rtt)
            ping = hosts.ping_ms(ADDR[1])
            port += 1
            procs = []
            for rank in (0, 1):
                env = {**os.environ, "GLOO_SOCKET_IFNAME": hosts.dev[rank]}
                argv = [
                    "ip", "netns", "exec", hosts.ns[rank], sys.executable, __file__,
                    "--party", str(rank), "--checkpoint-path", str(checkpoint),
                    "--batch", "1", "--reps", str(reps),
                    "--master-addr", ADDR[0], "--master-port", str(port),
                ]  # fmt: skip
                procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )  # fmt: skip
                )
            outs = []
            for proc in procs:
                out, err = proc.communicate(timeout=900)
                if proc.returncode != 0:
                    raise RuntimeError(f"party failed: {err[-2000:]}")
                outs.append(json.loads(out.strip().splitlines()[-1]))
            rows.append(
                {
                    "link": f"netns, {hosts.mode}",
                    "rtt_ms": rtt,
                    "measured_rtt_ms": ping,
                    "batch": 1,
                    **outs[0],
                }  # fmt: skip
            )
            _print_cost(rows[-1])
    finally:
        hosts.close()
    return rows


def _print_cost(row: dict[str, Any]) -> None:
    a, b = row["without"], row["with"]
    print(
        f"[bench_ood] encrypted {row['link']} RTT {row['rtt_ms']:g} ms batch {row['batch']}: "
        f"{a['seconds'] / row['batch']:.3f} -> {b['seconds'] / row['batch']:.3f} s/img, "
        f"{a['rounds']:.0f} -> {b['rounds']:.0f} rounds, "
        f"{a['bytes'] / 1e6 / row['batch']:.2f} -> {b['bytes'] / 1e6 / row['batch']:.2f} MB/img",
        flush=True,
    )


# ------------------------------------------------------------------------- report


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured {report['measured']} on {report['machine']}; load before: "
        f"{report['load_before']}, after: {report['load_after']}.",
        "",
        "**Choosing the detector (dev shift sets; AUROC against in-distribution eval):**",
        "",
        "| detector | features | near | orientation | far | near+orientation mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["choice"]:
        lines.append(
            f"| {r['method']} | {r['features']} | {_f(r['near'])} | {_f(r['orientation'])} | "
            f"{_f(r['far'])} | {_f(r['near_orientation_mean'])} |"
        )
    det = report["detector"]
    lines += [
        "",
        f"**Held-out shift sets** (never used to choose), deployed detector {det['method']} on "
        f"{det['features']} features, threshold {det['threshold']:.3f} (flags "
        f"{det['target_flag_rate']:.0%} of the calibration split):",
        "",
        "| set | images | AUROC | flagged (deployed threshold) | flagged (<= 5 % on eval) "
        "| AUROC per variant |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["heldout"]:
        variants = ", ".join(f"{k} {v:.2f}" for k, v in r["variants"].items()) or "—"
        lines.append(
            f"| {r['shift']} | {r['images']} | {_f(r['auroc'])} | {r['flagged_deployed']:.1%} | "
            f"{r['flagged_at_5pct']:.1%} | {variants} |"
        )
    names = list(report["models"])
    lines += [
        "",
        "**Accuracy on shifted images** (argmax; AUC in brackets), "
        + " vs ".join(f"{n} = {report['models'][n]}" for n in names)
        + ":",
        "",
        "| set | images | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in report["robustness"]:
        cells = " | ".join(f"{r[n]['accuracy']:.3f} ({r[n]['auc']:.3f})" for n in names)
        lines.append(f"| {r['set']} | {r['images']} | {cells} |")
    timing = report.get("encrypted_measured", report)
    lines += [
        "",
        "**Encrypted cost of the bit** (two real parties, TFP, party 0's clock; without and "
        f"with the bit measured alternately, {timing['reps']} times each after a warm-up "
        "pass each, medians"
        + (
            f"; re-measured {timing['measured']}, load before {timing['load_before']}, "
            f"after {timing['load_after']}"
            if timing is not report
            else ""
        )
        + "):",
        "",
        "| link | RTT (ms) | batch | s/img without → with | added [95 % CI] | rounds without → with "
        "| MB/img without → with |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["encrypted"]:
        a, b, n = r["without"], r["with"], r["batch"]
        added = (b["seconds"] - a["seconds"]) / a["seconds"]
        low, high = added_interval(a["all_seconds"], b["all_seconds"])
        lines.append(
            f"| {r['link']} | {_rtt(r)} | {n} | {a['seconds'] / n:.4f} → "
            f"{b['seconds'] / n:.4f} | {added:+.0%} [{low:+.0%}, {high:+.0%}] | "
            f"{a['rounds']:.0f} → {b['rounds']:.0f} | "
            f"{a['bytes'] / 1e6 / n:.2f} → {b['bytes'] / 1e6 / n:.2f} |"
        )
    return "\n".join(lines) + "\n"


def added_interval(
    without: list[float], with_bit: list[float], resamples: int = 2000
) -> tuple[float, float]:
    """95 % bootstrap interval of the added fraction (ratio of medians - 1), resampling the
    alternating repeats in pairs (a pair saw the same moment of machine load)."""
    import random
    import statistics

    rng = random.Random(0)
    pairs = list(zip(without, with_bit, strict=True))
    ratios = []
    for _ in range(resamples):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        base = statistics.median(p[0] for p in sample)
        ratios.append(statistics.median(p[1] for p in sample) / base - 1)
    ratios.sort()
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def _augmentation(checkpoint_path: Path) -> str:
    """How the checkpoint was augmented in training (from its metrics file)."""
    metrics = checkpoint_path.with_suffix("").with_suffix(".metrics.json")
    settings = json.loads(metrics.read_text())["settings"]
    if not settings.get("augment", True):
        return "no augmentation"
    return f"{settings.get('augmentation', 'basic')} augmentation"


def _rtt(row: dict[str, Any]) -> str:
    measured = row.get("measured_rtt_ms")
    return f"{row['rtt_ms']:g}" + ("" if measured is None else f" (measured {measured:.1f})")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "lenet.pth")
    parser.add_argument("--baseline", type=Path, default=ROOT / "runs/b18/robust/lenet.pth",
                        help="the same recipe with --augmentation robust (the README's command)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "seed")
    parser.add_argument("--shifts", type=Path, default=ROOT / "data" / "shifts")
    parser.add_argument("--rtt-ms", default="10,50", help="as root: netns RTTs ('' = none)")
    parser.add_argument(
        "--reps", type=int, default=60, help="alternating repeats (ms-scale times are noisy here)"
    )
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--skip-encrypted", action="store_true")
    parser.add_argument("--only-encrypted", action="store_true",
                        help="re-measure the encrypted cost only; keep the rest of OUT_DIR/ood.json")  # fmt: skip
    # internal: one party inside a namespace
    parser.add_argument("--party", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-path", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--master-addr", help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.party is not None:
        return _netns_party(args)

    torch.set_num_threads(1)
    if args.only_encrypted:
        return _only_encrypted(args)
    load_before = _load()
    checkpoint = load_checkpoint(args.model)
    if checkpoint.detector is None:
        parser.error(f"{args.model} carries no unfamiliarity detector")
    pre = Preprocessing(checkpoint.architecture.image_size)
    split = _training_split(args.model, args.data, pre)
    eval_set = ImageFolder(args.data / "eval", pre)
    dev = {s: load_shift_set(args.shifts / "dev" / s, pre) for s in SHIFTS}
    heldout = {s: load_shift_set(args.shifts / "heldout" / s, pre) for s in SHIFTS}
    print(f"[bench_ood] {len(split['fit'][1])} fit, {len(eval_set)} eval, "
          f"{sum(len(s.labels) for s in dev.values())} dev and "
          f"{sum(len(s.labels) for s in heldout.values())} held-out shifted images", flush=True)  # fmt: skip

    choice = choose_detector(checkpoint, split, eval_set.images, dev)
    eval_out = model_outputs(checkpoint, eval_set.images, checkpoint.detector.features)
    held = heldout_figures(checkpoint, eval_out, heldout)
    for r in held:
        print(f"[bench_ood] held-out {r['shift']:>20}: AUROC {_f(r['auroc'])}, flagged "
              f"{r['flagged_deployed']:.1%} (deployed), {r['flagged_at_5pct']:.1%} (5 % on eval)",
              flush=True)  # fmt: skip
    models = {f"{_augmentation(args.model)} (model)": args.model}
    if args.baseline.exists():
        models[f"{_augmentation(args.baseline)} (baseline)"] = args.baseline
    loaded = {name: load_checkpoint(path) for name, path in models.items()}
    robust_rows = robustness(loaded, (eval_set.images, eval_set.labels), heldout)
    for r in robust_rows:
        print(f"[bench_ood] accuracy {r['set']:>20}: " + ", ".join(
            f"{n} {r[n]['accuracy']:.3f}" for n in loaded), flush=True)  # fmt: skip

    encrypted = [] if args.skip_encrypted else encrypted_costs(args)
    report = {
        "measured": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
        f"Python {platform.python_version()}, torch threads 1",
        "load_before": load_before,
        "load_after": _load(),
        "reps": args.reps,
        "models": {
            name: str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            for name, path in models.items()
        },  # fmt: skip
        "detector": checkpoint.detector.public_summary(),
        "choice": choice,
        "heldout": held,
        "robustness": robust_rows,
        "encrypted": encrypted,
    }
    _write(args.out_dir, report)
    return 0


def encrypted_costs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Loopback rows, and as root the rows across namespaces at ``--rtt-ms``."""
    encrypted = loopback_costs(args.model, [int(b) for b in args.batches.split(",")], args.reps)
    rtts = [float(x) for x in args.rtt_ms.split(",") if x]
    if rtts and os.geteuid() == 0:
        encrypted += netns_costs(args.model, rtts, args.reps)
    elif rtts:
        print("[bench_ood] not root: no namespaces, no RTT rows", file=sys.stderr)
    return encrypted


def _only_encrypted(args: argparse.Namespace) -> int:
    """The encrypted cost re-measured into an existing report (the detector's figures need
    the data sets and the augmentation baseline, and do not change with the program)."""
    path = args.out_dir / "ood.json"
    if not path.exists():
        print(f"[bench_ood] {path} does not exist: run the whole benchmark once", file=sys.stderr)
        return 2
    report = json.loads(path.read_text())
    load_before = _load()
    report["encrypted"] = encrypted_costs(args)
    report["encrypted_measured"] = {
        "measured": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_before,
        "load_after": _load(),
        "reps": args.reps,
    }
    _write(args.out_dir, report)
    return 0


def _write(out_dir: Path, report: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ood.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out_dir / "ood.md").write_text(table)
    print(table)


if __name__ == "__main__":
    raise SystemExit(main())
