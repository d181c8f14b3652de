"""The doctor's signed image request: what is signed, how, and for how long it is valid.

A doctor holds an ECDSA P-256 key pair (made in the browser by the clinic's viewer page with
WebCrypto, or by the Python client) and the clinic enrolled its public key. Each image request
carries three headers: ``X-CD-Doctor`` (the doctor's id), ``X-CD-Timestamp`` (Unix ms) and
``X-CD-Signature`` (base64url of the signature over :func:`request_message`). WebCrypto writes
ECDSA signatures as raw ``r‖s`` (64 bytes); Python's ``cryptography`` reads and writes DER;
both encodings are accepted here. A request is valid for ``REQUEST_WINDOW_S`` either side of
the clinic's clock, and the clinic refuses a signature it has already seen (replays).
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

#: How far a request's timestamp may be from the clinic's clock (each way), in seconds.
REQUEST_WINDOW_S = 60
DOCTOR_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = (
    "X-CD-Doctor",
    "X-CD-Timestamp",
    "X-CD-Signature",
)
_P256_BYTES = 32
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class BadKey(ValueError):
    """Not a P-256 public key in SubjectPublicKeyInfo form."""


def request_message(case_id: str, doctor_id: str, timestamp_ms: int) -> bytes:
    """The exact bytes a doctor signs to see one case's image at one moment."""
    return f"crypto-doctor-image-request\n{case_id}\n{doctor_id}\n{timestamp_ms}".encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_public_key(spki_b64url: str) -> ec.EllipticCurvePublicKey:
    """A doctor's enrolled key: base64url SPKI DER (WebCrypto's ``exportKey("spki")``)."""
    try:
        key = serialization.load_der_public_key(unb64url(spki_b64url.strip()))
    except (ValueError, binascii.Error) as exc:
        raise BadKey("the public key must be base64url SubjectPublicKeyInfo") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BadKey("the public key must be an ECDSA P-256 key")
    return key


def public_key_text(key: ec.EllipticCurvePublicKey) -> str:
    """The enrolment form of a public key (base64url SPKI DER)."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64url(spki)


def raw_to_der(signature: bytes) -> bytes:
    """WebCrypto's ``r‖s`` (64 bytes for P-256) as the DER ``cryptography`` verifies."""
    if len(signature) != 2 * _P256_BYTES:
        raise ValueError("a raw P-256 signature is 64 bytes")
    r = int.from_bytes(signature[:_P256_BYTES], "big")
    s = int.from_bytes(signature[_P256_BYTES:], "big")
    return encode_dss_signature(r, s)


def der_to_raw(signature: bytes) -> bytes:
    r, s = decode_dss_signature(signature)
    return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")


def sign_request(
    private_key: ec.EllipticCurvePrivateKey, case_id: str, doctor_id: str, timestamp_ms: int
) -> str:
    """The ``X-CD-Signature`` value, raw ``r‖s`` like the browser's, base64url."""
    der = private_key.sign(
        request_message(case_id, doctor_id, timestamp_ms), ec.ECDSA(hashes.SHA256())
    )
    return b64url(der_to_raw(der))


def verify_request(
    public_key: ec.EllipticCurvePublicKey,
    case_id: str,
    doctor_id: str,
    timestamp_text: str,
    signature_text: str,
    now_ms: int,
) -> bool:
    """True for a fresh request signed by ``public_key``; never raises on malformed input."""
    if not _ID.fullmatch(case_id or "") or not _ID.fullmatch(doctor_id or ""):
        return False
    if not (timestamp_text or "").isdigit() or len(timestamp_text) > 16:
        return False
    timestamp_ms = int(timestamp_text)
    if abs(now_ms - timestamp_ms) > REQUEST_WINDOW_S * 1000:
        return False
    try:
        signature = unb64url(signature_text or "")
        der = raw_to_der(signature) if len(signature) == 2 * _P256_BYTES else signature
        public_key.verify(
            der, request_message(case_id, doctor_id, timestamp_ms), ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
