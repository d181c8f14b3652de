"""One call, one transaction: the decorators behind every public storage function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

P = ParamSpec("P")
R = TypeVar("R")

# Execution option read by the SQLite "begin" hook in ``storage.engine``.
SQLITE_BEGIN = "crypto_doctor_sqlite_begin"


def _unit(write: bool) -> Callable[[Callable[Concatenate[Session, P], R]], Callable[..., R]]:
    def decorate(fn: Callable[Concatenate[Session, P], R]) -> Callable[Concatenate[Session, P], R]:
        @functools.wraps(fn)
        def wrapper(session: Session, /, *args: P.args, **kwargs: P.kwargs) -> R:
            # Start from a fresh transaction so we read what the other process committed.
            if session.in_transaction():
                session.commit()
            session.expire_all()
            try:
                if write:
                    # SQLite: take the write lock up front (BEGIN IMMEDIATE) so two
                    # processes queue on the busy timeout instead of failing mid-way.
                    session.connection(execution_options={SQLITE_BEGIN: "IMMEDIATE"})
                result = fn(session, *args, **kwargs)
                session.commit()
                return result
            except BaseException:
                session.rollback()
                raise

        return wrapper

    return decorate


unit_of_work = _unit(write=True)
"""Run the function in its own write transaction: commit on success, roll back on error.

Anything already pending in the session is committed first."""

read_only = _unit(write=False)
"""Same, for reads: no write lock is taken, and the snapshot is released at the end."""
