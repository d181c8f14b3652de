"""End to end: ``python -m training`` on a tiny generated set writes every artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import parse_settings
from models.checkpoint import file_sha256, load_checkpoint
from training.bootstrap import dataset_is_complete, ensure_dataset
from training.encrypted_validation import ValidationSettings
from training.settings import TrainSettings, parse_train_settings

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


def test_settings_follow_the_write_up_and_env_fallbacks() -> None:
    settings = parse_train_settings(
        ["--source-dir-train", "a", "--source-dir-eval", "b", "--training-run-out",
         "models/resnet18.pth", "--backbone", "resnet18", "--max-epochs", "5",
         "--validate-encrypted", "True", "--augment", "FALSE", "--progress", "no",
         "--train-limit", "0", "--eval-limit", "7"],
        env={},
    )  # fmt: skip
    assert settings.backbone == "resnet18" and settings.validate_encrypted is True
    assert settings.augment is False and settings.progress is False
    assert (settings.train_limit, settings.eval_limit, settings.encrypted_limit) == (None, 7, 32)
    assert settings.training_run_out == Path("models/resnet18.pth")
    assert settings.architecture().activation == "relu"
    env = {
        "CRYPTO_DOCTOR_TRAIN_DIR": "t",
        "CRYPTO_DOCTOR_EVAL_DIR": "e",
        "CRYPTO_DOCTOR_NUM_THREADS": "3",
    }
    from_env = parse_train_settings([], env=env)
    assert from_env.source_dir_train == Path("t") and from_env.source_dir_eval == Path("e")
    assert from_env.num_threads == 3
    assert from_env.training_run_out == Path("models/lenet.pth")
    assert parse_train_settings(["--source-dir-eval", "x"], env=env).source_dir_eval == Path("x")
    assert parse_train_settings(["--source-dir-train", "a", "--source-dir-eval", "b"], env={}) == (
        TrainSettings(Path("a"), Path("b"), Path("models/lenet.pth"), num_threads=2)
    )


DIRS = ["--source-dir-train", "a", "--source-dir-eval", "b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source-dir-train", "a"], "--source-dir-train and --source-dir-eval are required"),
        ([*DIRS, "--calibration-fraction", "0.95"], "--calibration-fraction must be in [0, 0.9)"),
        ([*DIRS, "--max-epochs", "0"], "--max-epochs must be > 0"),
        ([*DIRS, "--lr=-0.001"], "--lr must be > 0"),
        ([*DIRS, "--train-limit", "-1"], "--train-limit must be >= 0"),
        ([*DIRS, "--backbone", "vgg"], "--backbone must be one of"),
        ([*DIRS, "--backbone", "resnet18", "--activation", "quad"], "resnet18 uses ReLU"),
        ([*DIRS, "--image-size", "50"], "image_size must be a multiple of 16"),
        ([*DIRS, "--augment", "maybe"], "--augment: expected true or false"),
        ([*DIRS, "--validate-encrypted"], "expected one argument"),
        ([*DIRS, "--teacher", "t.pth", "--distill-weight", "0"], "--distill-weight must be in"),
        ([*DIRS, "--teacher", "t.pth", "--dp-epsilon", "3"], "would pass it on outside the DP"),
    ],
)
def test_settings_refuse_bad_values_with_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_train_settings(argv, env={})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_encrypted_validation_flags_and_env() -> None:
    settings = parse_settings(
        ValidationSettings, ["--limit", "0", "--provider", "TTP"], {"CRYPTO_DOCTOR_EVAL_DIR": "e"}
    )
    assert settings == ValidationSettings(Path("models/lenet.pth"), Path("e"), None, 8, "TTP")
    with pytest.raises(SystemExit):
        parse_settings(ValidationSettings, ["--provider", "XYZ"], {})


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
    assert encrypted["unfamiliar_agreement_pct"] >= 75.0  # the detector's bit, encrypted
    passport = json.loads((out.parent / "lenet.provenance.json").read_text())
    assert passport["metrics"]["encrypted_validation"]["images"] == 4
    assert "argmax_agreement_pct" in result.stderr
