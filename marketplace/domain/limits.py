"""Limits on what one account (or everyone together) may do: rate limits and the open-claim cap.

A rate limit is a sliding window: at most ``count`` events in any ``window``. The caller keeps
the times of recent events (the marketplace keeps them in its database, so the limit holds
across restarts and processes) and asks :func:`check_rate` before recording a new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` events in any ``window``."""

    count: int
    window: timedelta

    def __post_init__(self) -> None:
        if self.count < 1 or self.window <= timedelta(0):
            raise ValueError("a rate limit needs count >= 1 and a positive window")


@dataclass(frozen=True)
class RateVerdict:
    """Whether one more event is allowed now, and if not, how long until it would be."""

    allowed: bool
    retry_after: timedelta


def check_rate(recent: Iterable[datetime], now: datetime, limit: RateLimit) -> RateVerdict:
    """May one more event happen at ``now``, given the times of earlier ones?

    Events later than ``now - window`` count (also any stamped ahead of ``now`` by another
    process's clock). Refused, ``retry_after`` is the wait until the oldest counted event
    that must leave the window has left it.
    """
    start = now - limit.window
    counted = sorted(t for t in recent if t > start)
    if len(counted) < limit.count:
        return RateVerdict(True, timedelta(0))
    leaving = counted[len(counted) - limit.count]
    return RateVerdict(False, leaving + limit.window - now)


def may_open_claim(open_claims: int, cap: int) -> bool:
    """A doctor may take one more seat while their open (unvoted, unsettled) claims are below
    ``cap``: each open claim is a case they hold up until they vote."""
    return open_claims < cap
