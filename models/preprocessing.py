"""The one image preprocessing used by training, evaluation and both MPC parties.

Any JPEG/PNG (any size, grayscale, RGB, palette, 16-bit) becomes a ``1 x S x S`` float
tensor: converted to grayscale, padded to a square (so anatomy is never stretched),
resized, then standardised per image. Per-image standardisation makes the model blind to
the scanner's global intensity scale, and it is done in plaintext by the party that holds
the image, so it costs nothing under MPC.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

DEFAULT_IMAGE_SIZE = 64
#: Standardised pixels are clipped to +-Z_CLIP: a tiny bright object on black would otherwise
#: reach z = 30 or more, and the quadratic activations would carry that past CrypTen's
#: fixed-point range (|x| * |y| < 2^31 for a product) on exactly the unfamiliar images.
Z_CLIP = 6.0
#: Class index -> label. Index 1 is the positive ("yes"/tumour) class everywhere.
CLASS_NAMES: tuple[str, str] = ("no_tumor", "tumor")


@dataclass(frozen=True)
class Preprocessing:
    """Image -> normalised tensor. ``image_size`` is stored in every checkpoint."""

    image_size: int = DEFAULT_IMAGE_SIZE

    def to_grayscale_square(self, image: Image.Image) -> Image.Image:
        """Grayscale, centred on a black square canvas, resized to ``image_size``."""
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            span = float(array.max() - array.min()) or 1.0
            image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
        gray = image.convert("L")
        side = max(gray.size)
        canvas = Image.new("L", (side, side), 0)
        canvas.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
        return canvas.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)

    def tensor(self, image: Image.Image) -> torch.Tensor:
        """``1 x S x S`` float32 tensor with zero mean and unit variance, clipped to ±Z_CLIP."""
        array = np.asarray(self.to_grayscale_square(image), dtype=np.float32) / 255.0
        array = np.clip((array - array.mean()) / (array.std() + 1e-6), -Z_CLIP, Z_CLIP)
        return torch.from_numpy(array).unsqueeze(0)

    def tensor_from_bytes(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:
            return self.tensor(image)

    def tensor_from_path(self, path: str | Path) -> torch.Tensor:
        with Image.open(path) as image:
            return self.tensor(image)
