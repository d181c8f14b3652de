"""App factory of the doctor service: database, worker threads and escalation via cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.orm import sessionmaker

from marketplace import review
from marketplace.service.errors import error_middleware
from marketplace.service.settings import MarketplaceSettings
from marketplace.storage import make_engine, make_sessionmaker, migrate

log = logging.getLogger(__name__)
T = TypeVar("T")

SETTINGS = web.AppKey("settings", MarketplaceSettings)
SESSIONS = web.AppKey("sessions", sessionmaker)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def run_db(app: web.Application, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one storage unit of work in the DB worker pool, off the event loop."""
    factory = app[SESSIONS]

    def work() -> T:
        with factory() as session:
            return fn(session, *args, **kwargs)

    return await asyncio.get_running_loop().run_in_executor(app[EXECUTOR], work)


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    executor = ThreadPoolExecutor(max_workers=settings.db_workers, thread_name_prefix="db")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, migrate, settings.db_url)
    engine = make_engine(settings.db_url)
    app[EXECUTOR] = executor
    app[SESSIONS] = make_sessionmaker(engine)
    yield
    executor.shutdown(wait=True)
    engine.dispose()


async def _escalation(app: web.Application) -> AsyncIterator[None]:
    """Periodically escalate overdue cases (raise bounty, widen pool) - one task per app."""
    settings = app[SETTINGS]

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.escalation_interval_s)
            try:
                escalated = await run_db(
                    app, review.escalate_overdue, now=utcnow(), policy=settings.policy
                )
                if escalated:
                    log.info("escalated %d overdue case(s)", len(escalated))
            except Exception:
                log.exception("escalation pass failed; retrying next interval")

    task = asyncio.create_task(loop(), name="escalation")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Added just before headers go out, so streamed responses get them too."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")


def create_app(settings: MarketplaceSettings) -> web.Application:
    """The doctor service on :8081: JSON API, ``POST /decision``, ``/decisions.csv``, web page."""
    from marketplace.service import api, csv_stream, page

    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_escalation)
    app.add_routes(api.routes)
    app.add_routes(csv_stream.routes)
    page.add_routes(app, settings)
    return app
