"""Rate limits counted in the marketplace's store (``domain.limits`` decides, this keeps count).

Every process and every restart counts the same events, so a limit cannot be dodged by
reaching another process or waiting for a restart. Runs inside the caller's unit of work.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from marketplace.domain.limits import RateLimit, check_rate
from marketplace.errors import RateLimited
from marketplace.storage.models import RateEvent

#: The key of all self-registrations together (one limit for every client: see the README).
REGISTRATION = "registration"


def claims_of(doctor_id: str) -> str:
    """The key of one doctor's claims."""
    return f"claim:{doctor_id}"


def lock(session: Session, key: str) -> None:
    """Hold ``key`` until the caller's transaction ends, so that counting and recording are
    one step for concurrent requests: a PostgreSQL advisory lock; on SQLite the write
    transaction (``BEGIN IMMEDIATE``) already keeps every other writer out."""
    if session.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(f"crypto-doctor-rate|{key}".encode()).digest()
        session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], signed=True))))


def take(session: Session, key: str, limit: RateLimit, now: datetime, what: str) -> None:
    """Record one event of ``key`` at ``now``, or raise :class:`RateLimited` (nothing recorded)
    if ``limit`` is reached; events that left the window are forgotten."""
    lock(session, key)
    start = now - limit.window
    recent = session.scalars(select(RateEvent.at).where(RateEvent.key == key, RateEvent.at > start))
    verdict = check_rate(recent, now, limit)
    if not verdict.allowed:
        wait = max(1, math.ceil(verdict.retry_after.total_seconds()))
        raise RateLimited(
            f"at most {limit.count} {what} per {int(limit.window.total_seconds())} s; "
            f"try again in {wait} s",
            wait,
        )
    session.execute(
        delete(RateEvent)
        .where(RateEvent.key == key, RateEvent.at <= start)
        .execution_options(synchronize_session=False)
    )
    session.add(RateEvent(key=key, at=now))
    session.flush()
