"""The consensus benchmark script runs and the shipped rule beats plain majority on it."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_reliability_weighting_beats_plain_majority(tmp_path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/bench_consensus.py"),
            "--cases",
            "600",
            "--seeds",
            "2",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    results = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    majority = results["plain majority, 2 of 3"]
    shipped = results["quorum + widening, Beta-reputation weights (shipped)"]
    assert shipped["correct_mean"] > majority["correct_mean"]
    assert majority["reviews_per_case"] == 3.0
