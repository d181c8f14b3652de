"""The whole story as a user meets it: ``scripts/demo`` from outside, real clients only.

Slow (about 1.5-3 minutes): two MPC parties, the doctor service, ganache with Ocean's
contracts, the publisher and the download service all start for real on ephemeral ports.

The demo prints a step's title when the step starts, then what it achieved and "ok" when it
finished; this test reads the achievements (case ids, predictions, bounties, payouts,
diagnoses, the published digest, the researcher's rows), not the titles. It runs the demo as
a user does, without --work-dir, so it also checks that the temporary folder is gone at the end.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = 5
CASE = r"case ([0-9a-f]{8})…"  # how the demo names a case: the first 8 hex digits of its id

pytestmark = [pytest.mark.slow, pytest.mark.chain]


def _steps(stdout: str) -> dict[str, str]:
    """Each step's title -> what the step printed after it (its lines and its "ok" line)."""
    parts = re.split(r"^\[\s*\d+\] (.+)$", stdout, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _achieved(steps: dict[str, str], title_start: str) -> tuple[str, str]:
    """The finished step's printed lines and its "ok" detail; fails if it never finished."""
    [body] = [body for title, body in steps.items() if title.startswith(title_start)]
    ok = re.search(r"^     ok  (.+)  \([\d.]+ s; [\d.]+ s total\)$", body, re.M)
    assert ok, f"step {title_start!r} did not finish:\n{body}"
    return body, ok.group(1)


def test_demo_runs_the_whole_story_and_the_researcher_gets_the_rows(tmp_path: Path) -> None:
    assert (ROOT / "models" / "lenet.pth").exists(), "the seed model is part of the repository"
    run = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its temporary folder lands here
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "[demo] OK" in run.stdout, output[-4000:]
    [work] = re.findall(
        r"^\[demo\] crypto-doctor end to end; state and logs in (.+)$", run.stdout, re.M
    )
    assert Path(work).parent == tmp_path
    assert not Path(work).exists(), "the demo left its temporary folder behind"
    assert f"[demo] removed {work}" in run.stdout
    steps = _steps(run.stdout)
    for title in steps:
        _achieved(steps, title)  # every step that started also finished

    # patients: five distinct cases accepted and queued
    body, ok = _achieved(steps, f"{CASES} patients upload a slice")
    accepted = re.findall(rf"-> {CASE}  status (\w+)", body)
    case_ids = {case_id for case_id, _ in accepted}
    assert len(case_ids) == CASES and {status for _, status in accepted} == {"queued"}
    assert ok == f"{CASES} cases accepted (202)"

    # encrypted prediction: every case got a label with a confidence
    body, _ = _achieved(steps, "encrypted prediction")
    predicted = re.findall(
        rf"{CASE}\s+(tumor|no_tumor) \(([\d.]+)\)\s+in [\d.]+ s after POST\s+"
        r"\[truth: (tumor|no_tumor)\]",
        body,
    )
    assert {case_id for case_id, *_ in predicted} == case_ids, body
    assert all(0.0 <= float(confidence) <= 1.0 for _, _, confidence, _ in predicted)
    truth = {case_id: label for case_id, _, _, label in predicted}
    model_label = {case_id: label for case_id, label, _, _ in predicted}

    # bounties: every case in the pool with a positive bounty, the escrow is their sum
    body, ok = _achieved(steps, "bounties")
    bounty = {case_id: int(b) for case_id, b in re.findall(rf"{CASE}  bounty (\d+) credits", body)}
    assert set(bounty) == case_ids and all(b > 0 for b in bounty.values()), body
    escrow = sum(bounty.values())
    assert ok == f"{CASES} cases, {escrow} credits in escrow"
    # the doctors' link from a case to its model's passport opens the readable passport
    assert re.search(
        r"^\s+model lenet v\d+, its passport readable at "
        r"http://127\.0\.0\.1:\d+/passports/0x[0-9a-fA-F]{40}$",
        body,
        re.M,
    ), body

    # blind review: three sealed votes on every case
    body, _ = _achieved(steps, "blind review")
    assert set(re.findall(rf"{CASE}  3 sealed votes, last receipt", body)) == case_ids, body

    # settlement: the three doctors were paid exactly the escrow
    body, ok = _achieved(steps, "settlement")
    balances = [int(b) for b in re.findall(r"^     Dr .+? balance\s+(\d+)  reputation", body, re.M)]
    assert len(balances) == 3 and sum(balances) == escrow, body
    assert ok == f"{CASES} cases settled; doctors paid exactly the {escrow} escrowed credits"

    # patients read their settled diagnosis: the panel's label is the truth, 3 reviewers
    body, _ = _achieved(steps, "patients read their diagnosis")
    read = re.findall(
        rf"{CASE}  model\s+(\w+), doctors\s+(\w+) \((\d+) reviewers, agreement [\d.]+\)", body
    )
    assert {case_id for case_id, *_ in read} == case_ids, body
    for case_id, model, diagnosis, reviewers in read:
        assert (model, diagnosis, reviewers) == (model_label[case_id], truth[case_id], "3")

    # the researcher's file, as the demo printed it (its folder is gone): the published rows,
    # as on chain, naming no case, patient or doctor
    body, ok = _achieved(steps, "researcher CLI downloads the CSV")
    lines = [line.removeprefix("     ") for line in body.strip("\n").splitlines()[:-1]]
    csv_text = "".join(line + "\n" for line in lines)  # the one CSV dialect: "\n" line ends
    sha256 = hashlib.sha256(csv_text.encode()).hexdigest()
    csv_path = Path(work) / "crypto-doctor-diagnoses.csv"
    assert ok == f"{CASES} anonymized rows in {csv_path} (sha256 {sha256[:16]}…)"
    _, ok = _achieved(steps, "research rows published on Ocean")
    assert re.fullmatch(
        rf"{CASES} rows; CSV sha256 {sha256[:16]}… on data NFT 0x[0-9a-fA-F]{{40}}", ok
    )
    _, ok = _achieved(steps, "researcher CLI buys")
    paid = re.fullmatch(r"order 0x[0-9a-fA-F]{16}… paid ([\d.e+-]+) OCEAN", ok)
    assert paid and float(paid.group(1)) > 0, ok
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(rows) == CASES
    assert collections.Counter(r["diagnosis"] for r in rows) == collections.Counter(truth.values())
    assert collections.Counter(r["model_label"] for r in rows) == collections.Counter(
        model_label.values()
    )
    assert all(r["reviewers"] == "3" for r in rows)
    assert set(rows[0]) == {
        "day", "backbone", "model_label", "confidence_bucket", "diagnosis", "reviewers",
        "agreement", "unfamiliar", "model_version",
    }  # fmt: skip
    assert len({r["model_version"] for r in rows}) == 1  # the seed model's attested version
    assert rows[0]["model_version"].startswith("lenet v")
    assert not any(case_id in csv_text for case_id in case_ids)

    # SIGTERM stopped every process: the supervisor exited 0, nothing listens any more
    _, ok = _achieved(steps, "stopping the system")
    assert ok == "exit code 0"
    ports = [int(p) for p in re.findall(r"--(?:patient|doctor|chain|ocean)-port (\d+)", output)]
    assert len(ports) == 4
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
