"""Hospitals' JSON API: a hospital reads its own royalty statement with its own token.

``GET /api/hospitals/me/statement`` (``Authorization: Bearer <hospital token>``) and
``GET /api/hospitals/{pseudonym}/statement``, which answers 403 for any other hospital's.
"""

from __future__ import annotations

from aiohttp import web

from infra.web import ApiError, in_session
from marketplace import hospitals
from marketplace.service.api import as_json
from marketplace.service.context import EXECUTOR, SESSIONS

routes = web.RouteTableDef()


async def current_hospital(request: web.Request) -> str:
    """Hospital pseudonym from the bearer token: 401 when missing or unknown."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <the hospital's token>")
    app = request.app
    pseudonym = await in_session(
        app[EXECUTOR], app[SESSIONS], hospitals.authenticate, token.strip()
    )
    if pseudonym is None:
        raise ApiError(401, "unauthorized", "unknown hospital token")
    return pseudonym


async def _statement(request: web.Request, pseudonym: str, reader: str) -> web.Response:
    app = request.app
    statement = await in_session(
        app[EXECUTOR], app[SESSIONS], hospitals.statement, pseudonym, reader=reader
    )
    return web.json_response(as_json(statement))


@routes.get("/api/hospitals/me/statement")
async def my_statement(request: web.Request) -> web.Response:
    """Contribution per model version, share, pool, payouts and balance of the caller."""
    reader = await current_hospital(request)
    return await _statement(request, reader, reader)


@routes.get("/api/hospitals/{pseudonym}/statement")
async def statement_of(request: web.Request) -> web.Response:
    """The same, named: 403 unless it is the caller's own."""
    reader = await current_hospital(request)
    return await _statement(request, request.match_info["pseudonym"], reader)
