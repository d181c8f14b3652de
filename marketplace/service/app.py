"""App factory of the marketplace service: its store, worker threads, escalation, and the message
link with the clinic (inbox route and courier), started and stopped via cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from sqlalchemy import Engine

from infra.openapi import add_openapi_route, load_spec
from infra.web import error_middleware, in_session, run_blocking, secure_headers
from marketplace import review
from marketplace.service.api import routes as api_routes
from marketplace.service.context import EXECUTOR, SESSIONS, SETTINGS, WAKEUP, utcnow
from marketplace.service.csv_stream import routes as csv_routes
from marketplace.service.errors import STATUS
from marketplace.service.events import install as install_events
from marketplace.service.hospitals_api import routes as hospital_routes
from marketplace.service.mail import install as install_mail
from marketplace.service.metrics import install as install_metrics
from marketplace.service.page import add_page
from marketplace.service.settings import MarketplaceSettings
from marketplace.storage import make_engine, make_sessionmaker, migrate

log = logging.getLogger(__name__)

#: The OpenAPI 3 document of every route below, served at ``GET /openapi.json``.
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"


def _database(engine: Engine) -> Callable[[web.Application], AsyncIterator[None]]:
    """Migrate the store before serving; shut the pool and the engine down after."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        try:
            await run_blocking(app[EXECUTOR], migrate, app[SETTINGS].db_url)
            yield
        finally:
            app[EXECUTOR].shutdown(wait=True)
            engine.dispose()

    return ctx


async def _escalation(app: web.Application) -> AsyncIterator[None]:
    """Periodically escalate overdue cases: raise the bounty, admit a lower tier and open the
    next seats, never freeing one (one task per app)."""
    settings = app[SETTINGS]

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.escalation_interval_s)
            try:
                escalated = await in_session(
                    app[EXECUTOR],
                    app[SESSIONS],
                    review.escalate_overdue,
                    now=utcnow(),
                    policy=settings.policy,
                )
                if escalated:
                    log.info("escalated %d overdue case(s)", len(escalated))
                    app[WAKEUP].wake()  # doctors' live pages show the raised bounties now
            except Exception:
                log.exception("escalation pass failed; retrying next interval")

    task = asyncio.create_task(loop(), name="escalation")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: MarketplaceSettings) -> web.Application:
    """The marketplace on :8081: doctors' JSON API, ``POST /decision``, ``/decisions.csv``, web
    page, ``POST /messages`` (the clinic's inbox) and its courier, ``/metrics``, ``/openapi.json``."""
    app = web.Application(middlewares=[error_middleware(STATUS)], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    # No connection is made until the app starts (the database context migrates first).
    engine = make_engine(settings.db_url)
    app[SESSIONS] = make_sessionmaker(engine)
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=settings.db_workers, thread_name_prefix="db")
    secure_headers(app)
    app.cleanup_ctx.append(_database(engine))
    app.cleanup_ctx.append(_escalation)
    install_mail(app)
    install_metrics(app)
    app.add_routes(api_routes)
    app.add_routes(csv_routes)
    app.add_routes(hospital_routes)
    install_events(app)
    add_openapi_route(app, load_spec(OPENAPI_PATH))
    add_page(app, settings)
    return app
