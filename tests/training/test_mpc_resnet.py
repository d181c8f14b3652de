"""The MPC-designed ResNet, trained by the documented command, agrees with itself encrypted.

Small and slow: 32 px, two epochs on generated slices, then the two-party check of
``--validate-encrypted`` on 100 eval images. What is checked is what a user relies on: the
encrypted program gives the plaintext network's decision on (at least 99 % of) eval images.
"""

from __future__ import annotations

import pytest

from training.__main__ import main as train_main
from training.synthetic import generate_dataset

pytestmark = pytest.mark.slow


def test_trained_mpc_resnet_encrypted_argmax_agrees_with_plaintext(tmp_path):
    import json

    root = generate_dataset(tmp_path / "mri", seed=7, train=240, eval=100)
    out = tmp_path / "resnet18-mpc.pth"
    code = train_main(
        [
            "--source-dir-train", str(root / "train"), "--source-dir-eval", str(root / "eval"),
            "--training-run-out", str(out), "--backbone", "resnet18-mpc", "--image-size", "32",
            "--max-epochs", "2", "--progress", "False",
            "--validate-encrypted", "True", "--encrypted-limit", "100",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["architecture"] == {
        "backbone": "resnet18-mpc", "image_size": 32, "activation": "quad", "relu_stages": 0
    }  # fmt: skip
    encrypted = metrics["encrypted_validation"]
    assert encrypted["images"] == 100
    assert encrypted["argmax_agreement_pct"] >= 99.0
