"""What the doctor service's handlers share, as ``web.AppKey``s set up by ``app.create_app``.

Handlers import this module, never ``app``, so the service's imports run one way.
"""

from __future__ import annotations

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


def utcnow() -> datetime:
    return datetime.now(UTC)
