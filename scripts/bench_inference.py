"""Benchmark: plaintext vs encrypted inference, and the served throughput with/without batching.

Not a test. Writes ``bench/inference.json`` and ``bench/inference.md`` and prints the table.

    .venv/bin/python scripts/bench_inference.py                 # everything (~10 min)
    .venv/bin/python scripts/bench_inference.py --skip-service  # model timings only

Beside our numbers it runs ``../shared/bench/crypten_baseline.py`` (CrypTen used the plain
way: ``from_pytorch``, max-pool LeNet, torchvision ResNet18) in the same run, same machine.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.net import free_port  # noqa: E402
from models.checkpoint import benchmark_checkpoint, load_checkpoint  # noqa: E402
from models.inference import EncryptedClassifier, ForwardCost, measure_forward  # noqa: E402
from models.mpc import run_parties  # noqa: E402

BASELINE = ROOT.parent / "shared" / "bench" / "crypten_baseline.py"
OUT = ROOT / "bench"


def _encrypted_party(
    rank: int, checkpoint_path: str, batch: int, reps: int, comparison: str
) -> ForwardCost:
    from models.crypten_compat import load_crypten
    from models.encrypted import relu_comparison

    classifier = EncryptedClassifier.for_party(load_crypten(), rank, checkpoint_path)
    with relu_comparison(comparison):
        return measure_forward(classifier, batch, reps)


def plaintext_seconds(checkpoint_path: Path, batch: int, reps: int) -> float:
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.model()
    size = checkpoint.architecture.image_size
    images = torch.randn(batch, 1, size, size)
    with torch.no_grad():
        model(images)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - started)
    return statistics.median(times) / batch


def bench_models(
    reps: int, workdir: Path, backbones: list[str], comparisons: list[str]
) -> list[dict]:
    """``backbones``: each ``BACKBONE[@IMAGE_SIZE]``; 128 px ResNets at batch 1 only. Each
    network with ReLUs once per ReLU comparison in ``comparisons`` (``gate``, ``crypten``)."""
    rows = []
    for spec, comparison in [
        (backbone, comparison)
        for backbone in backbones
        for comparison in (comparisons if _has_relu(backbone) else ["gate"])
    ]:
        backbone, _, wanted = spec.partition("@")
        path, weights = benchmark_checkpoint(
            ROOT / "models", backbone, workdir, int(wanted) if wanted else None
        )
        size = load_checkpoint(path).architecture.image_size
        for batch in (1, 8) if backbone == "lenet" or size <= 64 else (1,):
            enc = run_parties(_encrypted_party, str(path), batch, reps, comparison)[0]
            plain = plaintext_seconds(path, batch, reps)
            rows.append(
                {
                    "system": "crypto-doctor",
                    "model": backbone + (" (CrypTen's ReLU)" if comparison == "crypten" else ""),
                    "input": f"1x{size}x{size}",
                    "batch": batch,
                    "weights": weights,
                    "enc_s_per_img": enc.seconds / batch,
                    "plain_s_per_img": plain,
                    "ratio": enc.seconds / batch / plain,
                    "rounds": enc.rounds,
                    "mb_per_img": enc.bytes / batch / 1e6,
                    "offline_s_per_img": enc.offline_seconds / batch,
                    "offline_mb_per_img": enc.offline_bytes / batch / 1e6,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _has_relu(spec: str) -> bool:
    backbone = spec.partition("@")[0]
    return backbone.startswith("resnet18") and backbone != "resnet18-mpc"


def bench_baseline(reps: int, cases: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, size, batch in cases:
        if not BASELINE.exists():
            break
        result = subprocess.run(
            [sys.executable, str(BASELINE), kind, str(size), str(batch), str(reps)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        line = [x for x in result.stdout.splitlines() if x.startswith("{")]
        if not line:
            rows.append(
                {"system": "CrypTen from_pytorch", "model": kind, "error": result.stderr[-500:]}
            )
            continue
        r = json.loads(line[-1])
        rows.append(
            {
                "system": "CrypTen from_pytorch",
                "model": kind,
                "input": f"1x{size}x{size}",
                "batch": batch,
                "weights": "random init",
                "enc_s_per_img": r["enc_s_per_img"],
                "plain_s_per_img": r["plain_s_per_img"],
                "ratio": r["enc_s_per_img"] / r["plain_s_per_img"],
                "rounds": r["rounds"],
                "mb_per_img": r["bytes_per_img"] / 1e6,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------ the served path


def _post_and_wait(patient_url: str, image: bytes) -> float:
    from tests.predictor.conftest import http, multipart

    started = time.perf_counter()
    body, headers = multipart("bench.jpg", image)
    status, payload, _ = http("POST", patient_url + "/image", data=body, headers=headers)
    answer = json.loads(payload)
    assert status == 202, answer
    auth = {"Authorization": f"Bearer {answer['patient_token']}"}
    while True:  # long-poll: the answer comes as soon as the prediction is recorded
        _, view, _ = http("GET", f"{patient_url}/case/{answer['case_id']}?wait=30", headers=auth)
        if json.loads(view)["prediction"] is not None:
            return time.perf_counter() - started


def bench_service(
    images: list[bytes], workdir: Path, clients: list[int], requests: int
) -> list[dict]:
    rows = []
    for max_batch in (8, 1):
        port = free_port()
        run_dir = Path(tempfile.mkdtemp(dir=workdir))
        argv = [
            sys.executable, "-m", "predictor", "--patient-port", str(port), "--doctor-port", str(free_port()),
            "--market-db-url", f"sqlite:///{run_dir / 'market.sqlite3'}",
            "--clinic-db-url", f"sqlite:///{run_dir / 'clinic.sqlite3'}", "--data-dir", str(run_dir / "party0"),
            "--max-batch", str(max_batch), "--batch-wait-ms", "5", "--no-ocean", "--allow-unattested",
        ]  # fmt: skip
        with open(run_dir / "log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc)
            _post_and_wait(url, images[0])  # warm-up
            for n in clients:
                total = max(requests, n)
                started = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    latencies = list(
                        pool.map(
                            _post_and_wait,
                            [url] * total,
                            [images[i % len(images)] for i in range(total)],
                        )
                    )
                wall = time.perf_counter() - started
                rows.append(
                    {
                        "batching": max_batch > 1,
                        "max_batch": max_batch,
                        "clients": n,
                        "requests": total,
                        "images_per_s": total / wall,
                        "latency_p50_s": statistics.median(latencies),
                        "latency_p95_s": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return rows


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    from tests.predictor.conftest import http

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("predictor exited during start-up")
        try:
            status, body, _ = http("GET", url + "/healthz")
            if status == 200 and json.loads(body)["mpc_ready"]:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("predictor did not start")


def markdown(
    models: list[dict], service: list[dict], machine: str, models_date: str, service_date: str
) -> str:
    lines = [
        f"Machine: {machine}. Two parties on loopback, 1 torch thread each, TFP triples, median of repeats.",
        f"Model rows measured {models_date}; served-path rows {service_date}.",
        "",
        "'s/img encrypted', rounds and MB: the forward, once the image is there (online).",
        "'offline': before it, input-independent (EncryptedClassifier.prepare): dealing the sign",
        "gate's comparison keys (sent by party 0 under TFP) and the kept weight masks' Beaver",
        "triples (no communication under TFP). CrypTen from_pytorch draws its triples inside the",
        "forward: no separate offline phase.",
        "",
        "| system | model | input | batch | weights | s/img encrypted | s/img plaintext | enc/plain | rounds | MB/img | offline s/img | offline MB/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in models:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['model']} | failed: {r['error'][:80]} |||||||||| |")
            continue
        offline = (
            f"{r['offline_s_per_img']:.4f} | {r['offline_mb_per_img']:.2f}"
            if "offline_s_per_img" in r
            else " | "
        )
        lines.append(
            f"| {r['system']} | {r['model']} | {r['input']} | {r['batch']} | {r['weights']} | "
            f"{r['enc_s_per_img']:.4f} | {r['plain_s_per_img']:.5f} | {r['ratio']:.0f}x | "
            f"{r['rounds']:.0f} | {r['mb_per_img']:.2f} | {offline} |"
        )
    if service:
        lines += [
            "",
            "Served path (LeNet, `python -m predictor`, HTTP POST -> prediction visible via GET /case):",
            "",
            "| batching | clients | requests | images/s | p50 latency s | p95 latency s |",
            "|---|---|---|---|---|---|",
        ]
        for r in service:
            lines.append(
                f"| {'on (max 8)' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | "
                f"{r['images_per_s']:.2f} | {r['latency_p50_s']:.3f} | {r['latency_p95_s']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument(
        "--skip-models",
        action="store_true",
        help="re-measure only the served path; keep the model rows (and their date) of the last run",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--backbones",
        default="lenet,resnet18,resnet18-mpc,resnet18-mpc@128,resnet18@128",
        help="each BACKBONE[@IMAGE_SIZE]; resnet18-mpc+reluN: ReLU in its last N stages",
    )
    parser.add_argument(
        "--relu-comparisons",
        default="gate,crypten",
        help="how networks with ReLUs compare, each measured: gate (the one-opening sign "
        "gate, served) and/or crypten (CrypTen's circuit)",
    )
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        previous = json.loads((OUT / "inference.json").read_text()) if args.skip_models else None
        models = (
            previous["models"]
            if previous
            else bench_models(
                args.reps, workdir, args.backbones.split(","), args.relu_comparisons.split(",")
            )
        )
        if not args.skip_baseline and not previous:
            models += bench_baseline(
                3,
                [
                    ("lenet", 64, 1),
                    ("lenet", 64, 8),
                    ("lenet-avg", 64, 1),
                    ("resnet18", 64, 1),
                    ("resnet18", 128, 1),
                ],
            )
        service = []
        if not args.skip_service:
            from training.synthetic import generate_dataset

            root = generate_dataset(workdir / "mri", seed=11, train=2, eval=16)
            images = [p.read_bytes() for p in sorted((root / "eval").rglob("*.jp*g"))]
            service = bench_service(images, workdir, [1, 8, 16], args.requests)
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    models_date: str = previous["models_date"] if previous else now
    result = {
        "machine": machine,
        "date": now,
        "models_date": models_date,
        "models": models,
        "service": service,
    }
    (OUT / "inference.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(models, service, machine, models_date, now)
    (OUT / "inference.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
