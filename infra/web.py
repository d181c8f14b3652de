"""HTTP plumbing shared by the services: the JSON error shape, one error table per service,
and running blocking work (database, chain) off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web
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
                return json_error(status, code_of(exc), str(exc) or code_of(exc))
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
