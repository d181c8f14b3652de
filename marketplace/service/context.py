"""What the doctor service's handlers share, as ``web.AppKey``s set up by ``app.create_app``.

Handlers import this module, never ``app``, so the service's imports run one way.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy.orm import sessionmaker

from infra.courier import Courier
from marketplace.service.settings import MarketplaceSettings

SETTINGS = web.AppKey("settings", MarketplaceSettings)
#: Session factory and the bounded worker pool that runs every database call
#: (``infra.web.in_session(app[EXECUTOR], app[SESSIONS], fn, ...)``), off the event loop.
SESSIONS = web.AppKey("sessions", sessionmaker)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
#: Delivers the outbox to the clinic; ``wake()`` it after a commit that posted a message.
COURIER = web.AppKey("courier", Courier)


class Wakeup:
    """Wakes every open ``/api/events`` stream to look again now (after a claim or a vote).

    A wake only shortens a stream's wait: it still sends nothing unless the doctor's view
    changed, so the moment of someone else's vote cannot be read from it. ``generation``
    counts wakes, so a stream busy reading when one came does not wait past it.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.generation = 0
        self.closed = False

    def wake(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        """The server is stopping: every stream ends now instead of holding the shutdown."""
        self.closed = True
        self.wake()

    async def wait(self, timeout: float, since: int) -> None:
        """Until the next wake or ``timeout``; at once if there was a wake after ``since``."""
        if self.generation != since:
            return
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass


#: Wake the doctors' event streams (``marketplace.service.events``) after a commit.
WAKEUP = web.AppKey("events_wakeup", Wakeup)


def utcnow() -> datetime:
    return datetime.now(UTC)
