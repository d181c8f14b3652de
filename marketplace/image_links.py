"""Signed, expiring image links: party 1 signs, party 0 verifies; the image never reaches party 1."""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote, urlencode

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _signature(secret: bytes, case_id: str, doctor_id: str, expires: int) -> str:
    message = f"crypto-doctor-image\n{case_id}\n{doctor_id}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_image_url(
    secret: bytes, patient_base_url: str, case_id: str, doctor_id: str, ttl_s: int, now: float
) -> str:
    """Link to party 0's ``GET /image/{case_id}`` valid for ``ttl_s`` seconds for one doctor."""
    if not secret:
        raise ValueError("empty image-link secret")
    if not _ID.fullmatch(case_id) or not _ID.fullmatch(doctor_id):
        raise ValueError("case and doctor ids must be short url-safe strings")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    expires = int(now) + int(ttl_s)
    query = urlencode(
        {
            "doctor": doctor_id,
            "expires": str(expires),
            "sig": _signature(secret, case_id, doctor_id, expires),
        }
    )
    return f"{patient_base_url.rstrip('/')}/image/{quote(case_id)}?{query}"


def verify_image_signature(
    secret: bytes, case_id: str, doctor_id: str, expires: str, sig: str, now: float
) -> bool:
    """True only for an unexpired link signed with ``secret``; never raises on bad input."""
    try:
        if not secret or not isinstance(sig, str) or not _HEX64.fullmatch(sig):
            return False
        if not _ID.fullmatch(case_id) or not _ID.fullmatch(doctor_id):
            return False
        if not isinstance(expires, str) or not expires.isdigit() or len(expires) > 12:
            return False
        expires_at = int(expires)
        if expires_at < now:
            return False
        expected = _signature(secret, case_id, doctor_id, expires_at)
        return hmac.compare_digest(expected, sig)
    except (TypeError, ValueError):
        return False
