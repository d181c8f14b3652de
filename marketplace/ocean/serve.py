"""The download endpoint that replaces Ocean's Provider offline (web layer over `downloads`).

`create_download_app(settings)` is an aiohttp application, runnable standalone
(`python -m marketplace.ocean.serve --port 8082`) or mounted into another app with
`app.add_subapp("/ocean", create_download_app(settings))`. Routes:

- `GET /`            service summary (also answers ocean-lib's Aquarius liveness probe);
- `GET /asset`       the DDO, datatoken, exchange id and current on-chain digest;
- `GET /initialize`  a provider fee signed by the service key, valid for the order timeout;
- `POST /download`   `{"order_tx", "signature"}`: verifies the order on chain and streams the CSV;
- `GET /metrics`     Prometheus text, for loopback or the operator token (`infra.metrics`);
- `GET /passports/{id}` a model passport, readable (`passport_view`), and its documents.

Chain calls run in a small dedicated thread pool so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from infra.messaging import deeper_than
from infra.metrics import LATENCY_BUCKETS, add_metrics_route
from infra.settings import flag, nested, parse_settings
from infra.web import (
    MAX_JSON_DEPTH,
    Handler,
    error_middleware,
    run_blocking,
    run_service,
    secure_headers,
)
from marketplace.ocean.chain import ChainUnavailable
from marketplace.ocean.downloads import DatasetUpdating, Downloads, NotPublished
from marketplace.ocean.orders import (
    MalformedRequest,
    OrderNotGranted,
    UnprovenConsumer,
    parse_consumer,
    parse_download_request,
)
from marketplace.ocean.passport import DocumentMismatch, PassportError, PassportNotFound
from marketplace.ocean.passport_view import PASSPORT_POOL, PASSPORT_SETTINGS
from marketplace.ocean.passport_view import routes as passport_routes
from marketplace.ocean.settings import OceanSettings
from marketplace.ocean.state import OceanState

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
CHUNK = 64 * 1024

#: The one place where the download service's refusals become HTTP statuses.
STATUS: dict[type[Exception], int] = {
    MalformedRequest: 400,
    UnprovenConsumer: 401,
    OrderNotGranted: 403,
    NotPublished: 404,
    DatasetUpdating: 503,
    ChainUnavailable: 503,
    PassportNotFound: 404,
    DocumentMismatch: 409,
    PassportError: 503,
}


class Metrics:
    """The download service's own Prometheus registry (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.downloads = Counter(
            "ocean_downloads", "CSV files sent in full for a redeemed order", registry=self.registry
        )
        self.refused = Counter(
            "ocean_orders_refused",
            "download requests refused, by reason (the error code)",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ocean_request_seconds",
            "time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


@dataclass
class Runtime:
    """Objects shared by the handlers: the use cases, their thread pool, the metrics."""

    downloads: Downloads
    pool: ThreadPoolExecutor
    metrics: Metrics


RUNTIME = web.AppKey("ocean_runtime", Runtime)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency per route; refusals of `POST /download` by their code (before they become JSON)."""
    metrics = request.app[RUNTIME].metrics
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    try:
        return await handler(request)
    except Exception as exc:
        code = getattr(exc, "code", None)
        if route.endswith("/download") and isinstance(code, str):
            metrics.refused.labels(reason=code).inc()
        raise
    finally:
        metrics.latency.labels(route=route).observe(time.perf_counter() - started)


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    downloads = request.app[RUNTIME].downloads
    return web.json_response(
        {
            "service": "crypto-doctor research data (Ocean download endpoint)",
            "provider": downloads.provider,
            "network": downloads.settings.network_name,
        }
    )


@routes.get("/asset")
async def asset_info(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    info = await run_blocking(rt.pool, rt.downloads.describe)
    return web.json_response(asdict(info))


@routes.get("/initialize")
async def initialize(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    consumer = parse_consumer(request.query.get("consumer", ""))
    start = await run_blocking(rt.pool, rt.downloads.start_order, consumer)
    return web.json_response({"datatoken": start.datatoken, "providerFee": start.provider_fee})


@routes.post("/download")
async def download(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    raw = await request.read()
    if deeper_than(raw, MAX_JSON_DEPTH):
        raise MalformedRequest("bad_request", "body is nested too deeply")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedRequest("bad_request", "body must be JSON") from exc
    order_tx, signature = parse_download_request(body)
    got = await run_blocking(rt.pool, rt.downloads.redeem, order_tx, signature)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="crypto-doctor-diagnoses.csv"',
            "X-Dataset-SHA256": got.sha256,
        }
    )
    response.content_length = len(got.data)
    try:
        await response.prepare(request)
        for start in range(0, len(got.data), CHUNK):
            await response.write(got.data[start : start + CHUNK])
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        # nothing arrived: the order stays usable
        await run_blocking(rt.pool, rt.downloads.release, got.order_tx)
        raise
    rt.metrics.downloads.inc()
    return response


def create_download_app(settings: OceanSettings) -> web.Application:
    """App factory: the same startup path for tests, standalone runs and mounting."""
    metrics = Metrics()
    app = web.Application(middlewares=[error_middleware(STATUS), observe])

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ocean-chain")
        state = OceanState(settings.state_path)
        app[RUNTIME] = Runtime(Downloads(settings, state), pool, metrics)
        app[PASSPORT_POOL] = pool
        yield
        pool.shutdown(wait=True)
        state.close()

    app.cleanup_ctx.append(runtime_ctx)
    app[PASSPORT_SETTINGS] = settings
    app.add_routes(routes)
    app.add_routes(passport_routes)
    secure_headers(app)
    add_metrics_route(app, metrics.registry, settings.operator_token)
    return app


@dataclass(frozen=True)
class ServeSettings:
    """`python -m marketplace.ocean.serve`: where to listen, and the Ocean settings."""

    host: str = field(default="127.0.0.1", metadata=flag("interface to listen on"))
    port: int = field(default=8082, metadata=flag("port to listen on", env="OCEAN_PORT"))
    access_log: bool = field(default=False, metadata=flag("log one line per HTTP request"))
    ocean: OceanSettings = field(default_factory=OceanSettings, metadata=nested(""))


def main(argv: list[str] | None = None) -> None:
    """`python -m marketplace.ocean.serve`: run the download endpoint standalone."""
    settings = parse_settings(
        ServeSettings, argv, prog="python -m marketplace.ocean.serve", description=main.__doc__
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_service(
        create_download_app(settings.ocean),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
