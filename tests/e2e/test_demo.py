"""The whole story as a user meets it: ``scripts/demo`` from outside, real clients only.

Slow (about 1.5-3 minutes): two MPC parties, the doctor service, ganache with Ocean's
contracts, the publisher and the download service all start for real on ephemeral ports.
"""

from __future__ import annotations

import csv
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.chain]


def test_demo_runs_the_whole_story_and_the_researcher_gets_the_rows(tmp_path: Path) -> None:
    assert (ROOT / "models" / "lenet.pth").exists(), "the seed model is part of the repository"
    work = tmp_path / "demo"
    run = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--work-dir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    for step in (
        "patients upload a slice with curl",
        "encrypted prediction",
        "blind review",
        "doctors paid exactly the",
        "every patient has a settled diagnosis",
        "research rows published on Ocean",
        "researcher CLI downloads the CSV",
        "[demo] OK",
    ):
        assert step in output, f"missing step {step!r}:\n{output[-4000:]}"

    with open(work / "crypto-doctor-diagnoses.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    assert {r["diagnosis"] for r in rows} == {"tumor", "no_tumor"}
    assert all(r["reviewers"] == "3" for r in rows)
    # the research file names no case, patient or doctor
    assert set(rows[0]) == {
        "day", "backbone", "model_label", "confidence_bucket", "diagnosis", "reviewers",
        "agreement",
    }  # fmt: skip
    # SIGTERM stopped every process: the supervisor exited 0, nothing listens any more
    assert "exit code 0" in output
    ports = [int(p) for p in re.findall(r"--(?:patient|doctor|chain|ocean)-port (\d+)", output)]
    assert len(ports) == 4
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
