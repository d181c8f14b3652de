"""Validating a patient's upload before anything is stored.

Each refusal is its own exception with a stable ``code``; the patient API maps them to HTTP
statuses in one table (:data:`predictor.patient_api.ERROR_STATUS`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


class UploadRejected(Exception):
    """An upload that must not be stored."""

    code = "upload_rejected"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class MalformedUpload(UploadRejected):
    """Not a multipart form with a ``file`` field."""

    code = "bad_request"


class EmptyUpload(UploadRejected):
    code = "empty_upload"


class UploadTooLarge(UploadRejected):
    """Too many bytes (``too_large``), pixels (``too_many_pixels``) or a decompression bomb."""

    code = "too_large"


class UnsupportedImage(UploadRejected):
    code = "unsupported_media_type"


class CorruptImage(UploadRejected):
    code = "corrupt_image"


@dataclass(frozen=True)
class AcceptedImage:
    data: bytes
    content_type: str
    width: int
    height: int


def validate_image(data: bytes, *, max_bytes: int, max_pixels: int) -> AcceptedImage:
    """Accept only complete JPEG/PNG files of bounded size and pixel count."""
    if len(data) > max_bytes:
        raise UploadTooLarge(f"upload exceeds {max_bytes} bytes")
    if not data:
        raise EmptyUpload("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                width, height = image.size
                if fmt not in ACCEPTED_FORMATS:
                    raise UnsupportedImage(f"{fmt} images are not accepted; send JPEG or PNG")
                if width * height > max_pixels:
                    raise UploadTooLarge(
                        f"{width}x{height} exceeds {max_pixels} pixels", code="too_many_pixels"
                    )
                image.load()  # decodes every byte: catches truncated files
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadTooLarge(str(exc), code="decompression_bomb") from exc
    except Image.UnidentifiedImageError as exc:
        raise UnsupportedImage("not a JPEG or PNG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"the image could not be decoded: {exc}") from exc
    return AcceptedImage(data, ACCEPTED_FORMATS[fmt], width, height)
