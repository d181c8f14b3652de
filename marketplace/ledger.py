"""Ledger adapter: persists balanced transactions from ``domain.ledger`` and reads balances."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from marketplace.domain.ledger import Posting, check_balanced
from marketplace.storage.models import LedgerEntry, LedgerTransaction


def post(
    session: Session, *, kind: str, postings: Sequence[Posting], now: datetime, case_id: str | None
) -> int:
    """Add one balanced transaction to the session (the caller's unit of work commits it)."""
    check_balanced(postings)
    txn = LedgerTransaction(kind=kind, case_id=case_id, created_at=now)
    session.add(txn)
    session.flush()
    session.add_all(
        LedgerEntry(transaction_id=txn.id, account=p.account, amount=p.amount) for p in postings
    )
    session.flush()
    return txn.id


def balance(session: Session, account: str) -> int:
    """Current balance of ``account`` in credits."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.account == account)
    )
    return int(total or 0)


def all_balances(session: Session) -> dict[str, int]:
    """Every account's balance (used by invariant checks and tests)."""
    rows = session.execute(
        select(LedgerEntry.account, func.sum(LedgerEntry.amount)).group_by(LedgerEntry.account)
    )
    return {account: int(total) for account, total in rows}
