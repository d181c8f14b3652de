"""Upload validation: what party 0 refuses before anything is stored."""

import io

import pytest
from PIL import Image

from infra.web import status_for
from predictor.patient_api import ERROR_STATUS
from predictor.uploads import UploadRejected, validate_image

LIMITS = {"max_bytes": 2_000_000, "max_pixels": 4_000_000}


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt", "ctype"),
    [("L", "JPEG", "image/jpeg"), ("RGB", "PNG", "image/png"), ("I;16", "PNG", "image/png")],
)
def test_accepts_jpeg_and_png_of_any_mode(mode, fmt, ctype):
    data = encode(Image.new(mode, (37, 80)), fmt)
    accepted = validate_image(data, **LIMITS)
    assert (accepted.content_type, accepted.width, accepted.height) == (ctype, 37, 80)


def rejected(data: bytes, **limits) -> UploadRejected:
    with pytest.raises(UploadRejected) as info:
        validate_image(data, **{**LIMITS, **limits})
    return info.value


def status(error: UploadRejected) -> int | None:
    """The HTTP status the patient API answers this refusal with."""
    return status_for(error, ERROR_STATUS)


def test_rejects_non_images_and_other_formats_with_415():
    assert status(rejected(b"%PDF-1.4 not an image")) == 415
    assert status(rejected(encode(Image.new("RGB", (8, 8)), "GIF"))) == 415


def test_rejects_truncated_file_with_400():
    data = encode(Image.effect_noise((256, 256), 40).convert("L"), "JPEG")
    assert status(rejected(data[: len(data) // 2])) == 400


def test_rejects_empty_file_with_400():
    assert status(rejected(b"")) == 400


def test_rejects_oversized_upload_with_413():
    data = encode(Image.new("L", (64, 64)), "PNG")
    assert rejected(data, max_bytes=len(data) - 1).code == "too_large"


def test_rejects_decompression_bomb_with_413():
    # A tiny PNG that decodes to 100 megapixels.
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")
    assert len(bomb) < 100_000
    error = rejected(bomb)
    assert status(error) == 413
