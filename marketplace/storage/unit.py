"""One call, one transaction: the decorator behind every public storage function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

P = ParamSpec("P")
R = TypeVar("R")


def unit_of_work(fn: Callable[Concatenate[Session, P], R]) -> Callable[Concatenate[Session, P], R]:
    """Commit on success, roll back on any error.

    Read-only calls commit too: on SQLite every transaction holds the write lock
    (``BEGIN IMMEDIATE``), so none may be left open for the other process.
    """

    @functools.wraps(fn)
    def wrapper(session: Session, /, *args: P.args, **kwargs: P.kwargs) -> R:
        # Sessions keep objects after commit; re-read rows another process may have changed.
        session.expire_all()
        try:
            result = fn(session, *args, **kwargs)
            session.commit()
            return result
        except BaseException:
            session.rollback()
            raise

    return wrapper
