"""The federation as real processes on 127.0.0.1: a SuperLink with TLS and node
authentication, one SuperNode per hospital, ``flwr run``. Slow: every round starts a
ClientApp process per hospital.

One run covers the issue's cases: three honest hospitals (one killed after round 1: a
dropout), one that sends NaN, one whose folder holds one class only, and one whose key was
never registered.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.federated.contribution import measure
from training.federated.local import LocalFederation, LocalHospital
from training.federated.outputs import FederatedPaths, load_arrays
from training.federated.processes import FEDERATION_VENV
from training.federated.protocol import RunConfig
from training.federated.sites import generate_eval, generate_site, site_profile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FEDERATION_VENV / "bin" / "flower-superlink").exists(),
        reason="the federation venv (.venv-fed) is not built: run scripts/setup",
    ),
]


@dataclass
class Outcome:
    federation: LocalFederation
    run: RunConfig
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    paths: FederatedPaths


def _one_class_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source / "yes", target / "yes")
    (target / "no").mkdir()
    return target


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    root = tmp_path_factory.mktemp("federation")
    data = root / "data"
    for index, name in enumerate(("h1", "h2", "h3", "h4")):
        generate_site(data / name, site_profile(index), count=40, seed=20 + index)
    eval_dir = generate_eval(data / "eval", count=60, seed=29)
    hospitals = [
        LocalHospital("h1", data / "h1"),
        LocalHospital("h2", data / "h2"),
        LocalHospital("h3", data / "h3"),
        LocalHospital("h4", data / "h4", simulate="nan-update"),
        LocalHospital("h5", _one_class_folder(data / "h1", data / "h5")),
        LocalHospital("h6", data / "h2", registered=False),
    ]
    run = RunConfig(
        rounds=2, local_epochs=1, min_hospitals=2, round_timeout_s=150.0,
        out=str(root / "out" / "federated.pth"), eval_dir=str(eval_dir),
    )  # fmt: skip
    federation = LocalFederation(root / "processes", hospitals)
    federation.start()
    result: dict[str, Any] = {}

    def submit() -> None:
        try:
            result["metrics"] = federation.run(run, timeout=1800)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=submit)
    thread.start()
    run_log = root / "processes" / "logs" / "run.log"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and thread.is_alive():
        if run_log.exists() and "round 1: eval" in run_log.read_text(errors="replace"):
            federation.kill("h3")
            break
        time.sleep(1)
    thread.join(1800)
    try:
        assert "metrics" in result, f"the federated run failed: {result.get('error')}"
        paths = FederatedPaths.for_checkpoint(Path(run.out))
        provenance = json.loads(paths.outputs.provenance.read_text())
        yield Outcome(federation, run, result["metrics"], provenance, paths)
    finally:
        federation.stop()


def _hospital(outcome: Outcome, name: str) -> dict[str, Any]:
    return next(h for h in outcome.provenance["hospitals"] if h["pseudonym"] == name)


def test_round_one_is_the_example_weighted_mean_of_what_the_nodes_returned(
    outcome: Outcome,
) -> None:
    folder = outcome.paths.updates / "round-001"
    accepted = outcome.metrics["rounds"][0]["hospitals"]
    assert sorted(accepted) == ["h1", "h2", "h3"]
    updates = {name: load_arrays(folder / f"{name}.npz") for name in accepted}
    total = sum(meta["examples"] for _, meta in updates.values())
    aggregate, _ = load_arrays(folder / "aggregate.npz")
    for index, got in enumerate(aggregate):
        if not np.issubdtype(got.dtype, np.floating):
            continue
        want = sum(
            arrays[index].astype(np.float64) * meta["examples"] / total
            for arrays, meta in updates.values()
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for name, (_, meta) in updates.items():
        assert meta["examples"] == accepted[name]["examples"] > 0
    # the provenance lists the hash of every kept update
    assert "round-001/h1.npz" in outcome.provenance["updates"]["sha256"]


def test_a_nan_update_is_rejected_and_logged(outcome: Outcome) -> None:
    for round_record in outcome.metrics["rounds"]:
        assert "NaN" in round_record["rejected"]["h4"]
        assert "h4" not in round_record["hospitals"]
    assert any("rejected" in e for e in _hospital(outcome, "h4")["events"])
    _, meta = load_arrays(outcome.paths.updates / "round-001" / "h4.npz")
    assert "NaN" in meta["rejected"]


def test_a_dropout_is_survived_and_recorded(outcome: Outcome) -> None:
    second = outcome.metrics["rounds"][1]
    assert "h3" in second["dropped_out"]
    assert sorted(second["hospitals"]) == ["h1", "h2"]
    assert any("dropped out" in e for e in _hospital(outcome, "h3")["events"])
    assert outcome.paths.outputs.checkpoint.is_file()


def test_a_hospital_with_one_class_is_left_out_with_the_reason(outcome: Outcome) -> None:
    h5 = _hospital(outcome, "h5")
    assert h5["status"] == "excluded" and "only one class" in h5["excluded_because"]
    assert "only one class" in outcome.federation.node_log("h5")


def test_an_unregistered_key_is_refused(outcome: Outcome) -> None:
    h6 = next(h for h in outcome.federation.hospitals if h.name == "h6")
    assert h6.process is not None and h6.process.poll() not in (None, 0)
    assert "Failed to activate SuperNode" in outcome.federation.node_log("h6")
    assert "h6" not in {h["pseudonym"] for h in outcome.provenance["hospitals"]}


def test_the_provenance_describes_the_run(outcome: Outcome) -> None:
    p = outcome.provenance
    assert p["training"]["type"] == "federated" and p["training"]["strategy"] == "fedavg"
    assert p["training"]["rounds"] == 2 and p["training"]["min_hospitals_per_round"] == 2
    h1 = _hospital(outcome, "h1")
    assert h1["claimed_data"]["size"] == 40 and len(h1["claimed_data"]["fingerprint_sha256"]) == 64
    assert "claimed" in p["hospital_data_note"]
    assert 0.25 <= p["calibration"]["temperature"] <= 8.0
    assert 0.0 <= p["calibration"]["pooled_ece"] <= 1.0
    assert [r["round"] for r in p["metrics"]["per_round"]] == [1, 2]
    for name in ("metrics", "curves", "reliability"):
        assert getattr(outcome.paths.outputs, name).is_file()


def test_the_federated_checkpoint_serves_encrypted(outcome: Outcome) -> None:
    from training.encrypted_validation import validate_encrypted

    report = validate_encrypted(
        outcome.paths.outputs.checkpoint, Path(outcome.run.eval_dir), limit=60
    )
    assert report.argmax_agreement_pct >= 99.0


def test_secagg_shows_the_model_owner_only_the_sum(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hospitals = [
        LocalHospital(
            f"s{i}", generate_site(data / f"s{i}", site_profile(i), count=30, seed=40 + i)
        )
        for i in range(3)
    ]
    eval_dir = generate_eval(data / "eval", count=40, seed=49)
    run = RunConfig(
        rounds=1, local_epochs=1, min_hospitals=2, round_timeout_s=300.0, secagg=True,
        out=str(tmp_path / "out" / "secagg.pth"), eval_dir=str(eval_dir),
    )  # fmt: skip
    with LocalFederation(tmp_path / "processes", hospitals) as federation:
        metrics = federation.run(run, timeout=1800)
    provenance = json.loads(Path(run.out).with_suffix(".provenance.json").read_text())
    assert provenance["training"]["secure_aggregation"] == "SecAgg+"
    assert provenance["updates"]["sha256"] == {}
    assert metrics["rounds"][0]["strategy"] == "fedavg+secagg"
    assert sorted(metrics["rounds"][0]["hospitals"]) == ["s0", "s1", "s2"]
    assert not FederatedPaths.for_checkpoint(Path(run.out)).updates.exists()
    # contribution cannot be measured without revealing updates: refused, paid by data size
    record = measure(Path(run.out))
    assert record["method"] == "data-size (SecAgg+)" and "coalition sums" in record["refused"]
    assert all(h["shapley"] is None for h in record["hospitals"].values())
    assert sum(h["share"] for h in record["hospitals"].values()) == pytest.approx(1.0)
