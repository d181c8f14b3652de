"""HTTP plumbing shared by the services: the JSON error shape, one error table per service,
running blocking work (database, chain) off the event loop, and serving an app hardened
(security headers, no ``Server`` banner, no echo of a request it could not parse, no access
log unless asked)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from infra.messaging import deeper_than

log = logging.getLogger(__name__)
T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, code: str, detail: str) -> web.Response:
    """The one error shape of every service: ``{"error": code, "detail": text}``."""
    return web.json_response({"error": code, "detail": detail}, status=status)


class ApiError(Exception):
    """A boundary failure (auth, malformed request) raised by a handler, with its status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def status_for(exc: BaseException, statuses: Mapping[type[Exception], int]) -> int | None:
    """The status a table gives an exception (its class or nearest mapped base), or None."""
    for kind in type(exc).__mro__:
        if kind in statuses:
            return statuses[kind]
    return None


def error_middleware(
    statuses: Mapping[type[Exception], int], *, realm: str = "crypto-doctor"
) -> Middleware:
    """Middleware mapping exceptions to JSON errors through one ``{exception: status}`` table.

    A mapped exception answers with its status, its ``code`` attribute (or its class name in
    snake case) and its message. Unmapped exceptions are logged and answer 500 without detail.
    """

    def code_of(exc: Exception) -> str:
        code = getattr(exc, "code", None)
        if isinstance(code, str):
            return code
        name = type(exc).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            response = json_error(exc.status, exc.code, exc.detail)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}"'
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(
                exc.status, (exc.reason or "error").lower().replace(" ", "_"), exc.text or ""
            )
        except json.JSONDecodeError:
            return json_error(400, "invalid_json", "request body must be JSON")
        except Exception as exc:
            status = status_for(exc, statuses)
            if status is not None:
                response = json_error(status, code_of(exc), str(exc) or code_of(exc))
                retry_after = getattr(exc, "retry_after_s", None)
                if isinstance(retry_after, int):
                    response.headers["Retry-After"] = str(retry_after)
                return response
            log.exception("unhandled error on %s %s", request.method, request.path)
            return json_error(500, "internal_error", "internal error")

    return middleware


#: Deepest JSON nesting any service parses: far beyond any real request, and far below the
#: recursion that could crash the interpreter (web3 raises Python's recursion limit).
MAX_JSON_DEPTH = 32


async def read_json(request: web.Request, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The request's JSON body; 400 for malformed or absurdly nested JSON (never a crash)."""
    raw = await request.read()
    if deeper_than(raw, max_depth):
        raise ApiError(400, "invalid_json", f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "request body must be JSON") from exc


async def run_blocking(executor: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in ``executor`` (a bounded pool), off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, lambda: fn(*args, **kwargs))


def in_session(
    executor: Executor, sessions: Callable[[], Any], fn: Callable[..., T], *args: Any, **kwargs: Any
) -> Awaitable[T]:
    """One storage unit of work ``fn(session, ...)`` in the DB pool, off the event loop."""

    def work() -> T:
        with sessions() as session:
            return fn(session, *args, **kwargs)

    return run_blocking(executor, work)


# -- serving an app ---------------------------------------------------------------------

#: Headers every answer carries unless its handler set its own: no MIME sniffing (a JSON error
#: is never run as a script), nothing kept in caches (answers hold tokens, cases, images), no
#: Referer leaving the page.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # aiohttp names itself and its Python version on every answer; nobody needs to know.
    response.headers.popall(hdrs.SERVER, None)


def secure_headers(app: web.Application) -> None:
    """Give every answer of ``app`` :data:`SECURITY_HEADERS` and no ``Server`` banner
    (streamed answers included: the hook runs just before headers go out)."""
    app.on_response_prepare.append(_secure)


class _BannerlessResponse(web.Response):
    """An answer the app never saw (the request did not parse): no ``Server`` header either."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


class _GuardedRequestHandler(web.RequestHandler):
    """Answers a request it could not parse with its status alone.

    aiohttp's own answer (and its log record) quotes the offending line, which can be
    ``Authorization: Bearer <token>`` when that header is the over-long one.
    """

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("unhandled error answering %s", request.remote, exc_info=exc)
        else:
            kind = type(exc).__name__ if exc is not None else "error"
            log.warning("%d to an unparsable request from %s (%s)", status, request.remote, kind)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent")
        if status >= 500:
            code, detail = "internal_error", "internal error"
        else:
            code = "bad_request"
            detail = "the request could not be read as HTTP (a line over 8 KB, or not HTTP)"
        response = _BannerlessResponse(
            status=status,
            text=json.dumps({"error": code, "detail": detail}),
            content_type="application/json",
            headers=SECURITY_HEADERS,
        )
        response.force_close()
        return response


class _GuardedServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """``web.AppRunner`` whose connections never echo a request they could not parse.

    aiohttp offers no public hook for that answer, so this swaps in the request handler above.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )


async def start_service(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    access_log: bool = False,
    shutdown_timeout: float = 60.0,
) -> ServiceRunner:
    """Serve ``app`` on ``sock`` (an already listening socket) or ``host:port``.

    Without ``access_log`` no line is logged per request. Returns the runner; ``await
    runner.cleanup()`` stops serving.
    """
    runner = ServiceRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    )
    await site.start()
    return runner


def run_service(app: web.Application, *, host: str, port: int, access_log: bool = False) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT (``web.run_app``, hardened)."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = await start_service(app, host=host, port=port, access_log=access_log)
        log.info("listening on http://%s:%d", host, port)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())
