"""Shared constants and helpers of the marketplace tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


MODEL_SHA = "ab" * 32
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
