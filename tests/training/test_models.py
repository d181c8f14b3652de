"""Both backbones' plaintext forward on preprocessed images, and the checkpoint round trip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import load_checkpoint, save_checkpoint
from models.nets import build_model, default_architecture
from models.preprocessing import Preprocessing
from training.loop import predict_logits


def _jpeg(size: tuple[int, int], mode: str) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "mode"), [((630, 630), "RGB"), ((201, 300), "L"), ((64, 40), "L")]
)
def test_preprocessing_shape_and_standardisation(size, mode) -> None:
    tensor = Preprocessing(64).tensor_from_bytes(_jpeg(size, mode))
    assert tensor.shape == (1, 64, 64) and tensor.dtype == torch.float32
    assert abs(float(tensor.mean())) < 1e-4 and abs(float(tensor.std()) - 1.0) < 1e-2


def test_preprocessing_is_blind_to_gain_and_grayscale_vs_rgb() -> None:
    prep = Preprocessing(64)
    rng = np.random.default_rng(1)
    base = rng.integers(20, 120, (240, 200), dtype=np.uint8)
    gray = prep.tensor(Image.fromarray(base))
    rgb = prep.tensor(Image.fromarray(base).convert("RGB"))
    brighter = prep.tensor(Image.fromarray((base * 2).astype(np.uint8)))
    assert torch.allclose(gray, rgb, atol=1e-5)
    assert torch.allclose(gray, brighter, atol=5e-2)  # uint8 resize rounding


@pytest.mark.parametrize("backbone", ["lenet", "resnet18"])
def test_forward_gives_two_logits_and_survives_checkpoint(backbone: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    arch = default_architecture(backbone)
    model = build_model(arch).eval()
    batch = torch.randn(3, 1, arch.image_size, arch.image_size)
    logits = predict_logits(model, batch)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    save_checkpoint(tmp_path / "m.pth", model, arch, temperature=1.7)
    loaded = load_checkpoint(tmp_path / "m.pth")
    assert loaded.temperature == pytest.approx(1.7)
    assert torch.allclose(predict_logits(loaded.model(), batch), logits, atol=1e-5)
