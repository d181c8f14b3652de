"""The Ocean benchmark script runs the whole flow and saves figures that add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_script_saves_what_it_prints(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_ocean.py"), "--rows", "9", "--k", "3"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # a script runs from anywhere
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert json.loads(run.stdout) == figures
    assert figures["deploy"]["transactions"] == 16 and figures["deploy"]["gas"] > 0
    assert figures["first_publish"]["rows"] == 9  # three days x three rows: all released
    assert "create NFT+datatoken+exchange" in figures["first_publish"]["gas"]
    assert figures["append_publish"]["rows"] == 12
    assert list(figures["append_publish"]["gas"]) == ["set CSV digest"]
    bought = figures["buy_download"]
    assert bought["rows"] == 12 and bought["paid_ocean_wei"] > 0
