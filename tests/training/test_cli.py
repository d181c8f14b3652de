"""End to end: ``python -m training`` on a tiny generated set writes every artifact."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.checkpoint import file_sha256, load_checkpoint
from training.bootstrap import dataset_is_complete, ensure_dataset
from training.settings import parse_settings, str_bool

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return ensure_dataset(tmp_path_factory.mktemp("data") / "mri", seed=5, train=12, eval=6)


def test_cli_trains_and_writes_checkpoint_metrics_plots_provenance(
    tiny_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "lenet.pth"
    result = subprocess.run(
        [sys.executable, "-m", "training",
         "--source-dir-train", str(tiny_root / "train"), "--source-dir-eval", str(tiny_root / "eval"),
         "--training-run-out", str(out), "--backbone", "lenet", "--max-epochs", "1",
         "--batch-size", "4", "--num-threads", "1", "--progress", "False",
         "--validate-encrypted", "False"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = load_checkpoint(out)
    assert checkpoint.architecture.backbone == "lenet"
    assert checkpoint.temperature > 0
    metrics = json.loads((out.parent / "lenet.metrics.json").read_text())
    assert metrics["eval"]["count"] == 6
    assert sum(map(sum, metrics["eval"]["confusion_matrix"])) == 6
    assert {"accuracy", "auc", "ece_before", "ece_after"} <= metrics["eval"].keys()
    assert metrics["temperature"] == pytest.approx(checkpoint.temperature)
    assert len(metrics["history"]["epochs"]) == 1
    assert metrics["data"]["train_count"] + metrics["data"]["calibration_count"] == 12
    assert "encrypted_validation" not in metrics
    provenance = json.loads((out.parent / "lenet.provenance.json").read_text())
    assert provenance["checkpoint_sha256"] == file_sha256(out)
    manifest = provenance["training_data"]["generator_manifest"]
    assert manifest["seed"] == 5 and manifest["splits"]["train"]["count"] == 12
    assert provenance["command"][:3] == ["python", "-m", "training"]
    for name in ("lenet.curves.png", "lenet.reliability.png"):
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_a_folder_without_the_layout(tmp_path: Path, tiny_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "--source-dir-train", str(tmp_path),
         "--source-dir-eval", str(tiny_root / "eval"), "--training-run-out",
         str(tmp_path / "x.pth"), "--progress", "False"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "expected sub-folders yes/ and no/" in result.stderr
    assert not (tmp_path / "x.pth").exists()


def test_settings_follow_the_write_up_and_env_fallbacks(tmp_path: Path) -> None:
    settings = parse_settings(
        ["--source-dir-train", "a", "--source-dir-eval", "b", "--training-run-out",
         "models/resnet18.pth", "--backbone", "resnet18", "--max-epochs", "5",
         "--validate-encrypted", "True"],
        environ={},
    )  # fmt: skip
    assert settings.backbone == "resnet18" and settings.validate_encrypted is True
    assert settings.training_run_out == Path("models/resnet18.pth")
    env = {
        "CRYPTO_DOCTOR_TRAIN_DIR": "t",
        "CRYPTO_DOCTOR_EVAL_DIR": "e",
        "CRYPTO_DOCTOR_NUM_THREADS": "3",
    }
    from_env = parse_settings([], environ=env)
    assert from_env.source_dir_train == Path("t") and from_env.num_threads == 3
    assert from_env.training_run_out == Path("models/lenet.pth")
    with pytest.raises(SystemExit):
        parse_settings(["--source-dir-train", "a"], environ={})
    with pytest.raises(argparse.ArgumentTypeError):
        str_bool("maybe")
    assert str_bool("FALSE") is False and str_bool("yes") is True


def test_ensure_dataset_reuses_and_refuses_foreign_folders(tiny_root: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_root.rglob("*.*")}
    assert ensure_dataset(tiny_root, seed=5, train=12, eval=6) == tiny_root
    assert {p: p.stat().st_mtime_ns for p in tiny_root.rglob("*.*")} == before
    assert not dataset_is_complete(tiny_root, seed=6, train=12, eval=6)

    foreign = tmp_path / "kaggle"
    (foreign / "train" / "yes").mkdir(parents=True)
    (foreign / "train" / "yes" / "Y1.jpg").write_bytes(b"a real scan")
    with pytest.raises(FileExistsError):
        ensure_dataset(foreign, seed=0, train=2, eval=2)
    assert (foreign / "train" / "yes" / "Y1.jpg").read_bytes() == b"a real scan"


def test_regenerating_with_fewer_images_leaves_no_stale_files(tmp_path: Path) -> None:
    root = ensure_dataset(tmp_path / "mri", seed=1, train=4, eval=2)
    ensure_dataset(root, seed=1, train=2, eval=2)
    assert len(list((root / "train").rglob("*.*"))) == 2
    assert dataset_is_complete(root, seed=1, train=2, eval=2)


@pytest.mark.slow
def test_cli_validate_encrypted_merges_two_party_figures(tiny_root: Path, tmp_path: Path) -> None:
    """Real two-party CrypTen run on 4 eval images; figures land in metrics and provenance."""
    out = tmp_path / "enc" / "lenet.pth"
    result = subprocess.run(
        [sys.executable, "-m", "training",
         "--source-dir-train", str(tiny_root / "train"), "--source-dir-eval", str(tiny_root / "eval"),
         "--training-run-out", str(out), "--max-epochs", "1", "--batch-size", "4",
         "--num-threads", "1", "--progress", "False",
         "--validate-encrypted", "True", "--encrypted-limit", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    encrypted = json.loads((out.parent / "lenet.metrics.json").read_text())["encrypted_validation"]
    assert encrypted["images"] == 4
    assert encrypted["argmax_agreement_pct"] >= 75.0
    assert encrypted["max_abs_logit_difference_error"] < 0.5
    passport = json.loads((out.parent / "lenet.provenance.json").read_text())
    assert passport["metrics"]["encrypted_validation"]["images"] == 4
    assert "argmax_agreement_pct" in result.stderr
