"""Signed, expiring image links: the marketplace signs, the clinic verifies with its public key.

The marketplace (which knows who holds a panel seat) signs each doctor's link with its own
Ed25519 private key; the clinic (party 0), which holds the image, checks the link with the
marketplace's *public* key. No secret is shared between the two organisations, and a link
names one case, one doctor and an expiry, so it cannot be reused for another case or doctor
or after it expires. Keys are hex as in :mod:`infra.messaging` (private: the 32-byte seed;
public: the raw 32-byte key).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: Prefix of every signed link: a signature over anything else (a message) never verifies.
DOMAIN = "crypto-doctor-image"
_SIG = re.compile(r"[0-9a-f]{128}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _message(case_id: str, doctor_id: str, expires: int) -> bytes:
    return f"{DOMAIN}\n{case_id}\n{doctor_id}\n{expires}".encode()


def _private(private_hex: str) -> Ed25519PrivateKey:
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    except (TypeError, ValueError):
        raise ValueError("signing key must be 64 hex digits (an Ed25519 seed)") from None


def sign_image_url(
    private_hex: str,
    patient_base_url: str,
    case_id: str,
    doctor_id: str,
    ttl_s: int,
    now: float,
) -> str:
    """Link to the clinic's ``GET /image/{case_id}``, valid ``ttl_s`` seconds for one doctor."""
    key = _private(private_hex)
    if not _ID.fullmatch(case_id) or not _ID.fullmatch(doctor_id):
        raise ValueError("case and doctor ids must be short url-safe strings")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    expires = int(now) + int(ttl_s)
    sig = key.sign(_message(case_id, doctor_id, expires)).hex()
    query = urlencode({"doctor": doctor_id, "expires": str(expires), "sig": sig})
    return f"{patient_base_url.rstrip('/')}/image/{quote(case_id)}?{query}"


def verify_image_signature(
    public_hex: str, case_id: str, doctor_id: str, expires: str, sig: str, now: float
) -> bool:
    """True only for an unexpired link signed by the holder of ``public_hex``'s private key.

    Never raises on bad input (a malformed link is simply not valid); ``public_hex`` itself
    is configuration and is checked when the clinic starts, but a bad one here is False too.
    """
    try:
        if not isinstance(sig, str) or not _SIG.fullmatch(sig):
            return False
        if not isinstance(case_id, str) or not _ID.fullmatch(case_id):
            return False
        if not isinstance(doctor_id, str) or not _ID.fullmatch(doctor_id):
            return False
        if not isinstance(expires, str) or not expires.isdigit() or len(expires) > 12:
            return False
        expires_at = int(expires)
        if expires_at < now:
            return False
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        key.verify(bytes.fromhex(sig), _message(case_id, doctor_id, expires_at))
        return True
    except (InvalidSignature, TypeError, ValueError):
        return False
