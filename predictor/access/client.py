"""The doctor's side of image access, for scripts and the command line.

    python -m predictor.access.client keygen ~/.crypto-doctor/doctor.key   # prints the public key
    python -m predictor.access.client fetch --clinic-url URL --case ID --doctor-id ID \\
        --key ~/.crypto-doctor/doctor.key --out scan.jpg

It signs each request exactly like the clinic's viewer page does in the browser (ECDSA P-256,
raw ``r‖s``); the private key stays in a file only its owner can read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from predictor.access.protocol import (
    DOCTOR_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    public_key_text,
    sign_request,
)


class AccessRefused(Exception):
    """The clinic refused the request (its status and error code)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def save_key(key: ec.EllipticCurvePrivateKey, path: Path) -> str:
    """Write ``key`` to a new file readable by its owner only; return the public key text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return public_key_text(key.public_key())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an ECDSA key")
    return key


def signed_headers(
    key: ec.EllipticCurvePrivateKey, case_id: str, doctor_id: str, now: float | None = None
) -> dict[str, str]:
    timestamp_ms = int((time.time() if now is None else now) * 1000)
    return {
        DOCTOR_HEADER: doctor_id,
        TIMESTAMP_HEADER: str(timestamp_ms),
        SIGNATURE_HEADER: sign_request(key, case_id, doctor_id, timestamp_ms),
    }


def fetch_image(
    clinic_url: str,
    case_id: str,
    doctor_id: str,
    key: ec.EllipticCurvePrivateKey,
    timeout: float = 30.0,
) -> tuple[bytes, str]:
    """The image bytes and content type; raises AccessRefused with the clinic's answer."""
    request = urllib.request.Request(
        f"{clinic_url.rstrip('/')}/image/{case_id}",
        headers=signed_headers(key, case_id, doctor_id),
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.read(), reply.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        raise AccessRefused(error.code, error.read()) from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m predictor.access.client")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="new key pair: private key to FILE, public key printed")
    keygen.add_argument("file", type=Path)
    fetch = sub.add_parser("fetch", help="fetch one case's image with a signed request")
    fetch.add_argument("--clinic-url", required=True)
    fetch.add_argument("--case", required=True)
    fetch.add_argument("--doctor-id", required=True)
    fetch.add_argument("--key", type=Path, required=True)
    fetch.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            print(save_key(new_key(), args.file))
            return 0
        data, _ = fetch_image(args.clinic_url, args.case, args.doctor_id, load_key(args.key))
        args.out.write_bytes(data)
        print(f"{len(data)} bytes -> {args.out}")
        return 0
    except FileExistsError:
        parser.exit(1, f"{args.file} exists: refusing to overwrite a key\n")
    except AccessRefused as exc:
        parser.exit(1, f"refused: {exc}\n")
    except (OSError, ValueError) as exc:
        parser.exit(1, f"{exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
