"""Encrypted fine-tuning's CLI and its promotion gate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import file_sha256, load_checkpoint
from models.passport.entry import full_fields
from training.compare import PairedAUC
from training.data import Sample
from training.encrypted_finetune import (
    REFUSED,
    GatePolicy,
    held_out_sizes,
    journal_path,
    judge,
    main,
    split_held_out,
)
from training.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[2]
SEED_MODEL = REPO / "models" / "lenet.pth"


def paired(difference: float) -> PairedAUC:
    return PairedAUC(2000, 0.85, 0.85 + difference, difference, difference - 0.01,
                     difference + 0.01, 0.95, 2000)  # fmt: skip


def test_the_gate_promotes_only_within_its_bounds():
    policy = GatePolicy(max_auc_drop=0.002, max_ece_increase=0.02)
    assert judge(policy, paired(+0.004), 0.03, 0.04).promoted
    assert judge(policy, paired(-0.001), 0.03, 0.04).promoted  # within chance and the bound
    worse = judge(policy, paired(-0.003), 0.03, 0.04)
    assert not worse.promoted and "AUC fell by 0.0030" in worse.reasons[0]
    narrow = PairedAUC(2000, 0.85, 0.849, -0.001, -0.0015, -0.0005, 0.95, 2000)
    certain = judge(policy, narrow, 0.03, 0.03)
    assert not certain.promoted and "beyond chance" in certain.reasons[0]
    drifting = judge(policy, paired(+0.01), 0.03, 0.06)
    assert not drifting.promoted and "ECE rose from 0.0300 to 0.0600" in drifting.reasons[0]
    blind = judge(policy, paired(+0.01), 0.03, 0.03, detector_lost=True)
    assert not blind.promoted and "unfamiliar" in blind.reasons[0]
    held = PairedAUC(8, 0.9, 0.6, -0.3, -0.5, -0.05, 0.95, 2000)
    worse_there = judge(policy, paired(+0.004), 0.03, 0.03, held_out=held)
    assert not worse_there.promoted and "8 held-out settled cases" in worse_there.reasons[0]
    unsure = PairedAUC(8, 0.9, 0.8, -0.1, -0.4, +0.2, 0.95, 2000)  # a handful: within chance
    assert judge(policy, paired(+0.004), 0.03, 0.03, held_out=unsure).promoted
    assert judge(GatePolicy(max_auc_drop=0.005), paired(-0.004), 0.03, 0.03).promoted
    assert not judge(GatePolicy(max_auc_drop=0.0), paired(-0.001), 0.03, 0.03).promoted


def _flipped(root: Path, out: Path, count: int) -> Path:
    """``count`` images per class of ``root`` under the other class: a poisoned panel."""
    for label, other in (("yes", "no"), ("no", "yes")):
        (out / other).mkdir(parents=True)
        for path in sorted((root / label).iterdir())[:count]:
            shutil.copy(path, out / other / path.name)
    return out


@pytest.mark.slow
def test_a_candidate_taught_flipped_labels_is_refused_and_the_parent_untouched(tmp_path):
    data = generate_dataset(tmp_path / "mri", seed=11, train=80, eval=200)
    cases = _flipped(data / "train", tmp_path / "cases", 16)
    parent = tmp_path / "parent.pth"
    shutil.copy(SEED_MODEL, parent)
    before = file_sha256(parent)
    out = tmp_path / "candidate" / "lenet.pth"
    argv = [
        "--checkpoint", str(parent), "--cases-dir", str(cases), "--owner-dir",
        str(data / "train"), "--eval-dir", str(data / "eval"), "--out", str(out),
        "--train-layers", "all", "--epochs", "3", "--lr", "0.1", "--dp-epsilon", "50",
        "--resamples", "200",
    ]  # fmt: skip
    assert main(argv) == REFUSED
    assert file_sha256(parent) == before  # the serving model is never written
    record = json.loads(out.with_suffix(".provenance.json").read_text())
    assert record["checkpoint_sha256"] == file_sha256(out)  # the refused candidate is kept
    assert record["parent"]["sha256"] == before
    assert record["taught_by"]["settled_cases"] + record["taught_by"]["held_out_cases"] == 32
    assert not record["gate"]["promoted"]
    assert any("AUC fell" in reason for reason in record["gate"]["reasons"])
    dp = record["differential_privacy"]
    assert dp["epsilon"] <= 50 and dp["noise_multiplier"] > 0
    candidate = load_checkpoint(out)
    assert candidate.detector is not None  # refitted on the owner's data
    # refused before anything runs: too few cases for one batch, or the parent as --out
    assert main([*argv[:10], "--batch-size", "64"]) == 2
    assert main([*argv[:10], "--train-layers", "fc9"]) == 2
    with pytest.raises(SystemExit):
        main([*argv[:8], "--out", str(parent)])


def _cases(root: Path, out: Path, count: int) -> Path:
    """``count`` images per class of ``root``, labelled as they are: a panel that was right."""
    for label in ("yes", "no"):
        (out / label).mkdir(parents=True)
        for path in sorted((root / label).iterdir())[:count]:
            shutil.copy(path, out / label / path.name)
    return out


def _journal_done(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["progress"]["done"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


@pytest.mark.slow
def test_a_crash_mid_fine_tune_leaves_the_parent_untouched_and_the_run_resumes(tmp_path):
    data = generate_dataset(tmp_path / "mri", seed=12, train=40, eval=100)
    cases = _cases(data / "train", tmp_path / "cases", 20)
    parent = tmp_path / "parent.pth"
    shutil.copy(SEED_MODEL, parent)
    before = file_sha256(parent)
    out = tmp_path / "candidate" / "lenet.pth"
    argv = [
        "--checkpoint", str(parent), "--cases-dir", str(cases), "--owner-dir",
        str(data / "train"), "--eval-dir", str(data / "eval"), "--out", str(out),
        "--epochs", "8", "--dp-epsilon", "20", "--resamples", "100",
    ]  # fmt: skip
    journal = journal_path(out)
    job = subprocess.Popen(
        [sys.executable, "-m", "training.encrypted_finetune", *argv],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _journal_done(journal) < 3 and job.poll() is None:
            assert time.monotonic() < deadline, "the fine-tune took no step in 300 s"
            time.sleep(0.02)
        assert job.poll() is None, job.stderr.read().decode() if job.stderr else ""
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the job and both parties, mid-step
        job.wait()
    crashed_at = _journal_done(journal)
    assert 3 <= crashed_at < 32  # 8 epochs of 32 cases (8 more held out) at 8 per step
    assert file_sha256(parent) == before and not out.exists()

    changed = [*argv[:-6], "--lr", "0.1", *argv[-6:]]
    assert main(changed) == 2  # another run's journal is refused, and kept
    assert _journal_done(journal) == crashed_at

    assert main(argv) in (0, REFUSED)
    assert file_sha256(parent) == before
    record = json.loads(out.with_suffix(".provenance.json").read_text())
    assert record["checkpoint_sha256"] == file_sha256(out)
    assert record["interruptions"]["resumes"] == 1
    assert record["interruptions"]["last_resumed_at_step"] == crashed_at
    dp = record["differential_privacy"]
    assert dp["steps"] == 32
    # the step killed mid-way may have been opened to party 1: it is spent, then taken again
    assert dp["steps_spent"] == 32 + record["interruptions"]["steps_opened_twice"]
    assert record["interruptions"]["steps_opened_twice"] in (0, 1)
    assert not journal.exists()
    # a passport entry of the candidate says what it is (models.passport.entry)
    entry = full_fields(record)
    assert entry["checkpoint_sha256"] == file_sha256(out)
    assert entry["training"]["type"] == "encrypted fine-tune"
    assert entry["dp_epsilon"] == round(dp["epsilon"], 4)
    assert entry["metrics"]["auc"] == round(record["gate"]["auc"]["auc_b"], 4)
    assert [d["role"] for d in entry["datasets"]] == ["eval"]
    assert "32 settled cases" in entry["limits"][0]
    # 4 cases of each class were held out, and judged encrypted (parent and candidate)
    assert record["taught_by"] == {**record["taught_by"], "settled_cases": 32, "held_out_cases": 8}
    held_out = record["gate"]["held_out"]
    assert held_out["images"] == 8 and 0 <= held_out["auc_a"] <= 1 and 0 <= held_out["auc_b"] <= 1
    assert not any("trained and evaluated on generated data" in limit for limit in entry["limits"])


def test_held_out_cases_come_from_both_classes_and_stay_the_same_on_resume(tmp_path):
    assert held_out_sizes((20, 20), 0.2) == (4, 4)
    assert held_out_sizes((30, 4), 0.2) == (0, 0)  # too few tumours to hold one out
    assert held_out_sizes((20, 20), 0.0) == (0, 0)
    samples = [Sample(tmp_path / f"{i:02d}.jpg", i % 2) for i in range(40)]
    train, held = split_held_out(samples, (4, 4))
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(40))
    assert sorted(samples[i].label for i in held) == [0] * 4 + [1] * 4
    reversed_held = split_held_out(list(reversed(samples)), (4, 4))[1]  # the same cases
    assert sorted(39 - i for i in reversed_held.tolist()) == held.tolist()
    other = [Sample(tmp_path / f"x{i:02d}.jpg", i % 2) for i in range(40)]
    assert not torch.equal(split_held_out(other, (4, 4))[1], held)  # other cases, other draw


def _spying_party(rank: int, checkpoint: str, cases: str, key, journal: str):
    """``_party``, recording what reaches this party from the other: every object sent on
    the control channel and every value opened to it."""
    from models.crypten_compat import load_crypten
    from training.encrypted_finetune import _party

    crypten = load_crypten()
    comm = crypten.communicator.get()  # the peer link's methods are set on the instance
    received, opened = [], []
    broadcast, open_value = comm.broadcast_obj, crypten.mpc.MPCTensor.get_plain_text

    def spying_broadcast(obj, src, group=None):
        out = broadcast(obj, src, group)
        if src != rank:
            received.append(out)
        return out

    def spying_open(self, dst=None):
        plain = open_value(self, dst=dst)
        if plain is not None:
            opened.append(tuple(plain.shape))
        return plain

    comm.broadcast_obj, crypten.mpc.MPCTensor.get_plain_text = spying_broadcast, spying_open
    try:
        outcome = _party(rank, checkpoint, cases, key, journal)
    finally:
        comm.broadcast_obj, crypten.mpc.MPCTensor.get_plain_text = broadcast, open_value
    return outcome is not None, received, opened


def test_party_1_receives_labels_counts_and_one_gradient_per_step_never_image_bytes(tmp_path):
    from models.encrypted import fold
    from models.mpc import run_parties
    from training.encrypted_finetune import RunKey, trainable_names

    data = generate_dataset(tmp_path / "mri", seed=14, train=16, eval=8)
    cases = _cases(data / "train", tmp_path / "cases", 8)
    parent = load_checkpoint(SEED_MODEL)
    key = RunKey(file_sha256(SEED_MODEL), 14, 3, 0.5, 1.0, 1.0, 0.1, ("fc3",), (1, 1))
    (_, to_party0, opened0), (finished, to_party1, opened1) = run_parties(
        _spying_party, str(SEED_MODEL), str(cases), key, str(tmp_path / "journal.pt")
    )  # fmt: skip
    assert finished
    # The control channel to party 1: the number of cases, each step's public labels, and the
    # held-out cases' paired AUC summary. Nothing else, no tensor, no pixel.
    count, *labels, summary = to_party1
    assert count == 14 and len(labels) == 3
    assert all(set(step) <= {0.0, 1.0} for step in labels)
    assert set(summary) == {"images", "auc_a", "auc_b", "difference", "ci_low", "ci_high",
                            "confidence", "resamples"} and summary["images"] == 2  # fmt: skip
    # Opened to party 1: one noisy gradient of the trained layer per non-empty step, nothing
    # of the images; party 0 gets the held-out cases' outputs (its own images), twice.
    fc3 = sum(p.numel() for n, p in fold(parent.model(), parent.architecture).items()
              if n in trainable_names(parent.architecture, ["fc3"]))  # fmt: skip
    steps_with_cases = sum(1 for step in labels if step)
    assert opened1 == [(fc3,)] * steps_with_cases
    assert opened0 == [(2,), (2,)]
    # party 0 learns the architecture and where a resumed run stands, from party 1
    assert [type(obj) for obj in to_party0] == [dict, int]


def _resnet_parent(data: Path, path: Path) -> Path:
    """A small ResNet18-MPC (32 px), its batch norms measured on ``data``'s images."""
    from models.checkpoint import save_checkpoint
    from models.nets import Architecture, build_model
    from models.preprocessing import Preprocessing
    from training.data import ImageFolder

    arch = Architecture("resnet18-mpc", image_size=32, activation="quad")
    torch.manual_seed(0)
    model = build_model(arch)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(ImageFolder(data, Preprocessing(32)).images)
    save_checkpoint(path, model.eval(), arch, 1.0)
    return path


@pytest.mark.slow
def test_a_resnet_learns_its_last_layer_on_features_computed_once(tmp_path):
    from models.encrypted import fold

    data = generate_dataset(tmp_path / "mri", seed=15, train=40, eval=60)
    cases = _cases(data / "train", tmp_path / "cases", 10)
    parent = _resnet_parent(data / "train", tmp_path / "resnet.pth")
    before = file_sha256(parent)
    out = tmp_path / "candidate" / "resnet.pth"
    argv = [
        "--checkpoint", str(parent), "--cases-dir", str(cases), "--owner-dir",
        str(data / "train"), "--eval-dir", str(data / "eval"), "--out", str(out),
        "--epochs", "2", "--batch-size", "4", "--resamples", "200",
    ]  # fmt: skip
    assert main([*argv, "--train-layers", "layer4,fc"]) == 2  # the last layer only
    assert not out.exists()
    assert main(argv) in (0, REFUSED)
    assert file_sha256(parent) == before and not journal_path(out).exists()
    old, new = load_checkpoint(parent), load_checkpoint(out)
    folded_old = fold(old.model(), old.architecture)
    folded_new = fold(new.model(), new.architecture)
    for name, value in folded_old.items():  # the convolutions as they were, the head moved
        if name.startswith("fc."):
            assert not torch.equal(value, folded_new[name]), name
        else:
            assert torch.equal(value, folded_new[name]), name
    record = json.loads(out.with_suffix(".provenance.json").read_text())
    assert record["settings"]["train_layers"] == "fc"
    assert record["taught_by"] == {"settled_cases": 16, "case_steps": None, "held_out_cases": 4}
    assert record["gate"]["held_out"]["images"] == 4


def test_resnet_party_1_receives_the_count_and_the_summary_never_labels_or_pixels(tmp_path):
    from models.mpc import run_parties
    from training.encrypted_finetune import RunKey

    data = generate_dataset(tmp_path / "mri", seed=16, train=16, eval=8)
    cases = _cases(data / "train", tmp_path / "cases", 6)
    parent = _resnet_parent(data / "train", tmp_path / "resnet.pth")
    key = RunKey(file_sha256(parent), 10, 3, 0.5, 1.0, 1.0, 0.1, ("fc",), (1, 1))
    (_, to_party0, opened0), (finished, to_party1, opened1) = run_parties(
        _spying_party, str(parent), str(cases), key, str(tmp_path / "journal.pt")
    )  # fmt: skip
    assert finished
    count, summary = to_party1  # no step's labels: the draws stay shared
    assert count == 10 and summary["images"] == 2
    assert opened1 == [(513,)] * 3  # every step opens its noisy sum, an empty draw's too
    assert opened0 == [(2,), (2,)]
    assert [type(obj) for obj in to_party0] == [dict, int]
