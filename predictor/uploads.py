"""Validating a patient's upload before anything is stored."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}


class UploadRejected(Exception):
    """An upload that must not be stored; carries the HTTP status to answer with."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class AcceptedImage:
    data: bytes
    content_type: str
    width: int
    height: int


def validate_image(data: bytes, *, max_bytes: int, max_pixels: int) -> AcceptedImage:
    """Accept only complete JPEG/PNG files of bounded size and pixel count."""
    if len(data) > max_bytes:
        raise UploadRejected(413, "too_large", f"upload exceeds {max_bytes} bytes")
    if not data:
        raise UploadRejected(400, "empty_upload", "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                width, height = image.size
                if fmt not in ACCEPTED_FORMATS:
                    raise UploadRejected(
                        415,
                        "unsupported_media_type",
                        f"{fmt} images are not accepted; send JPEG or PNG",
                    )
                if width * height > max_pixels:
                    raise UploadRejected(
                        413, "too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels"
                    )
                image.load()  # decodes every byte: catches truncated files
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRejected(413, "decompression_bomb", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:
        raise UploadRejected(415, "unsupported_media_type", "not a JPEG or PNG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(
            400, "corrupt_image", f"the image could not be decoded: {exc}"
        ) from exc
    return AcceptedImage(data, ACCEPTED_FORMATS[fmt], width, height)
