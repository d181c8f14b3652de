"""A doctor can check every receipt by hand, with the formula the README states.

The formula is written here as the README writes it, and computed with hashlib and with the
README's shell line only, never through the project's own `commitment()`; the README must
contain both texts verbatim, so the documentation and the code cannot drift apart.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from marketplace import review
from marketplace.domain.consensus import LABELS, commitment
from tests.marketplace.flows import make_doctors, open_case
from tests.marketplace.helpers import T0

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
FORMULA = 'sha256("crypto-doctor-vote|" + case_id + "|" + label + "|" + salt)'
SHELL = """printf '%s' "crypto-doctor-vote|$CASE_ID|$LABEL|$SALT" | sha256sum"""


def readme_receipt(case_id: str, label: str, salt: str) -> str:
    """FORMULA: SHA-256 of the UTF-8 text, as 64 lowercase hex digits."""
    return hashlib.sha256(
        ("crypto-doctor-vote|" + case_id + "|" + label + "|" + salt).encode("utf-8")
    ).hexdigest()


def shell_receipt(case_id: str, label: str, salt: str) -> str:
    """SHELL, run by bash with the three values in its environment."""
    out = subprocess.run(
        ["bash", "-c", SHELL],
        env={"CASE_ID": case_id, "LABEL": label, "SALT": salt, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()[0]


def test_readme_states_the_formula_and_the_shell_check_verbatim() -> None:
    assert FORMULA in README
    assert SHELL in README


def test_readme_formula_gives_the_receipt() -> None:
    for label in LABELS:
        case_id, salt = uuid.uuid4().hex, secrets.token_hex(32)  # as the clinic and review.py
        assert readme_receipt(case_id, label, salt) == commitment(case_id, label, salt)


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
def test_every_disclosed_receipt_recomputes_by_hand(session) -> None:
    case_id = open_case(session, confidence=0.95)
    docs = make_doctors(session, 3)
    now = T0 + timedelta(minutes=10)
    for doctor_id, _ in docs:
        review.claim_case(session, doctor_id, case_id, now=now)
    receipts = [
        review.cast_vote(session, doctor_id, case_id, label=label, note=None, now=now).receipt
        for (doctor_id, _), label in zip(docs, ["tumor"] * 3, strict=True)
    ]
    disclosed = review.disclosure(session, docs[0][0], case_id)
    assert sorted(v.receipt for v in disclosed.votes) == sorted(receipts)
    for vote in disclosed.votes:
        assert readme_receipt(case_id, vote.label, vote.salt) == vote.receipt
        assert shell_receipt(case_id, vote.label, vote.salt) == vote.receipt
