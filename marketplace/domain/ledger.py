"""Double-entry bookkeeping: every transaction is a set of postings that sums to zero.

Accounts are plain strings: ``treasury`` funds bounties (its balance goes negative
by exactly what it has issued), ``escrow:<case>`` holds a case's bounty until
settlement, ``doctor:<id>`` is a doctor's earned balance. Money is never created
or lost: the sum of all balances is always zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TREASURY = "treasury"


def escrow_account(case_id: str) -> str:
    return f"escrow:{case_id}"


def doctor_account(doctor_id: str) -> str:
    return f"doctor:{doctor_id}"


class UnbalancedTransaction(ValueError):
    """Postings of one transaction do not sum to zero (money would be created or lost)."""


@dataclass(frozen=True)
class Posting:
    """One leg of a transaction: positive credits the account, negative debits it."""

    account: str
    amount: int


def check_balanced(postings: Sequence[Posting]) -> None:
    """Raise unless the postings are non-empty, integral and sum to zero."""
    if not postings:
        raise UnbalancedTransaction("a transaction needs postings")
    for posting in postings:
        if not isinstance(posting.amount, int) or isinstance(posting.amount, bool):
            raise UnbalancedTransaction("amounts must be integer credits")
    total = sum(p.amount for p in postings)
    if total != 0:
        raise UnbalancedTransaction(f"postings sum to {total}, not 0")


def transfer(source: str, destination: str, amount: int) -> list[Posting]:
    """Move ``amount`` (> 0) credits from ``source`` to ``destination``."""
    if amount <= 0:
        raise ValueError("transfer amount must be positive")
    if source == destination:
        raise ValueError("source and destination must differ")
    return [Posting(source, -amount), Posting(destination, amount)]


def split_evenly(total: int, count: int) -> list[int]:
    """Split ``total`` into ``count`` integer shares differing by at most one credit.

    The remainder goes to the first shares, so callers order recipients
    deterministically (e.g. by vote time) to make payouts reproducible.
    """
    if count <= 0:
        raise ValueError("need at least one recipient")
    if total < 0:
        raise ValueError("cannot split a negative amount")
    share, remainder = divmod(total, count)
    return [share + (1 if i < remainder else 0) for i in range(count)]


def payout(escrow: str, escrow_balance: int, recipients: Sequence[str]) -> list[Posting]:
    """Postings that empty ``escrow`` into ``recipients`` in even integer shares."""
    if escrow_balance < 0:
        raise ValueError("escrow balance cannot be negative")
    if len(set(recipients)) != len(recipients):
        raise ValueError("recipients must be distinct")
    shares = split_evenly(escrow_balance, len(recipients))
    postings = [Posting(escrow, -escrow_balance)] if escrow_balance else []
    postings += [Posting(acct, amt) for acct, amt in zip(recipients, shares, strict=True) if amt]
    return postings


def apply(balances: Mapping[str, int], postings: Iterable[Posting]) -> dict[str, int]:
    """New balances after a balanced transaction (the input mapping is not changed)."""
    postings = list(postings)
    check_balanced(postings)
    result = dict(balances)
    for posting in postings:
        result[posting.account] = result.get(posting.account, 0) + posting.amount
    return result
