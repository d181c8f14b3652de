"""``GET /metrics`` for every HTTP service: Prometheus text format, for operators only.

Each service builds its own :class:`prometheus_client.CollectorRegistry` (no global state, so
several apps can live in one test process) and mounts :func:`add_metrics_route`. The route
answers requests from loopback, or from anywhere with ``Authorization: Bearer <operator
token>`` when ``CRYPTO_DOCTOR_OPERATOR_TOKEN`` is configured; everyone else gets 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from infra.net import is_loopback
from infra.web import json_error

#: Buckets (seconds) for request and prediction latencies: 5 ms to 2 minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def operator_allowed(request: web.Request, operator_token: str) -> bool:
    """Loopback peers, or a bearer token equal to the configured operator token."""
    if is_loopback(request.remote):
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return bool(
        operator_token
        and scheme.lower() == "bearer"
        and hmac.compare_digest(token.strip().encode(), operator_token.encode())
    )


def add_metrics_route(
    app: web.Application,
    registry: CollectorRegistry,
    operator_token: str,
    before_scrape: Callable[[], None] | None = None,
) -> None:
    """Mount ``GET /metrics``; ``before_scrape`` refreshes gauges read from elsewhere."""

    async def metrics(request: web.Request) -> web.Response:
        if not operator_allowed(request, operator_token):
            return json_error(
                403, "forbidden", "metrics are served to loopback or with the operator token"
            )
        if before_scrape is not None:
            before_scrape()
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/metrics", metrics)
