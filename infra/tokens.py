"""Bearer secrets (patient and doctor tokens): minted here, stored only as their sha256."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    """A fresh unguessable token (256 bits, URL-safe), shown to its owner once."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What the server stores and compares: the lowercase sha256 hex of the token."""
    return hashlib.sha256(token.encode()).hexdigest()
