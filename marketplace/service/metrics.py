"""``GET /metrics`` of the doctor service (Prometheus text, loopback or operator token).

Market totals (cases by status, settlements, votes, undelivered messages) are read from the database, so they are
right whichever process settled a case and survive restarts; a background task reads them
every ``metrics_interval_s`` in the DB pool, so a scrape never waits on the database. Request
latency is measured in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from infra.metrics import LATENCY_BUCKETS, add_metrics_route
from infra.web import Handler, in_session
from marketplace import review
from marketplace.domain.status import MARKET_STATUSES, CaseStatus
from marketplace.service.context import EXECUTOR, SESSIONS, SETTINGS

log = logging.getLogger(__name__)


class MarketCollector:
    """Exposes the latest :class:`review.MarketCounts` read from the database."""

    def __init__(self) -> None:
        self.counts: review.MarketCounts | None = None

    def collect(self) -> Iterable[Metric]:
        counts = self.counts
        if counts is None:
            return
        cases = GaugeMetricFamily(
            "crypto_doctor_cases", "Cases by status, from the database", labels=["status"]
        )
        for status in MARKET_STATUSES:
            cases.add_metric([status.value], counts.cases.get(status, 0))
        yield cases
        yield GaugeMetricFamily(
            "crypto_doctor_outbox_undelivered",
            "Messages for the clinic not yet delivered (grows while it is unreachable)",
            value=counts.undelivered,
        )
        yield CounterMetricFamily(
            "crypto_doctor_settlements",
            "Cases settled by their panel (diagnosis recorded, bounty paid out)",
            value=counts.cases.get(CaseStatus.SETTLED, 0),
        )
        yield CounterMetricFamily(
            "crypto_doctor_votes", "Sealed votes cast by doctors", value=counts.votes
        )


def _latency_middleware(latency: Histogram) -> Middleware:
    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        start, status = time.perf_counter(), 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away first (nginx's "client closed request")
            raise
        finally:
            info = request.match_info.route.resource
            route = info.canonical if info is not None else "unmatched"
            latency.labels(request.method, route, str(status)).observe(time.perf_counter() - start)

    return measure


def install(app: web.Application) -> None:
    """Mount ``/metrics``, time every request, and keep the database totals fresh.

    Call after the database's ``cleanup_ctx`` is added: the refresher needs its pool.
    """
    registry = CollectorRegistry()
    market = MarketCollector()
    registry.register(market)
    latency = Histogram(
        "crypto_doctor_http_request_duration_seconds",
        "Doctor-service request latency by method, route and status",
        ["method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    app.middlewares.insert(0, _latency_middleware(latency))

    async def refresh(app: web.Application) -> AsyncIterator[None]:
        async def read() -> None:
            market.counts = await in_session(app[EXECUTOR], app[SESSIONS], review.market_counts)

        async def loop() -> None:
            while True:
                await asyncio.sleep(app[SETTINGS].metrics_interval_s)
                try:
                    await read()
                except Exception:
                    log.exception("reading the market totals failed; retrying next interval")

        await read()
        task = asyncio.create_task(loop(), name="market-metrics")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(refresh)
    add_metrics_route(app, registry, app[SETTINGS].operator_token)
