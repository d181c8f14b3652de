"""``GET /decisions.csv``: the released research rows as a live CSV stream, for the operator.

Only rows the k-anonymous release has already put out (``research.released_after``): a
settled case whose group is still below k is never here, so this stream cannot link a row
to a case the reader saw in the pool. Only with ``Authorization: Bearer <operator token>``;
researchers get the same rows through Ocean. By default the response stays open and rows
are appended as they are released (chunked transfer, the server polls the database);
``?follow=0`` returns the rows released so far and ends.
"""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from infra.web import ApiError, in_session
from marketplace import research
from marketplace.domain.anonymize import csv_text
from marketplace.research import ReleaseCursor
from marketplace.service.context import EXECUTOR, SESSIONS, SETTINGS

routes = web.RouteTableDef()
CSV_TYPE = "text/csv"


def require_operator(request: web.Request) -> None:
    """401 without a bearer token; 403 for a wrong one, or for everyone when the marketplace
    has no operator token configured."""
    operator_token = request.app[SETTINGS].operator_token
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not operator_token:
        raise ApiError(403, "forbidden", "no operator token is configured on this marketplace")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <operator token>")
    if not hmac.compare_digest(token.strip().encode(), operator_token.encode()):
        raise ApiError(403, "forbidden", "the research stream is for the operator only")


async def _released_after(
    app: web.Application, cursor: ReleaseCursor | None
) -> list[tuple[ReleaseCursor, list[str]]]:
    return await in_session(app[EXECUTOR], app[SESSIONS], research.released_after, cursor)


async def _all_rows(app: web.Application) -> list[list[str]]:
    rows: list[list[str]] = []
    cursor: ReleaseCursor | None = None
    while True:
        batch = await _released_after(app, cursor)
        if not batch:
            return rows
        rows.extend(values for _, values in batch)
        cursor = batch[-1][0]


@routes.get("/decisions.csv")
async def decisions_csv(request: web.Request) -> web.StreamResponse:
    require_operator(request)
    follow = request.query.get("follow", "1").lower() not in ("0", "false", "no")
    if not follow:
        text = csv_text(await _all_rows(request.app), header=True)
        return web.Response(text=text, content_type=CSV_TYPE, charset="utf-8")

    response = web.StreamResponse(headers={"X-Accel-Buffering": "no"})
    response.content_type = CSV_TYPE
    response.charset = "utf-8"
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(csv_text([], header=True).encode())
    poll = request.app[SETTINGS].csv_poll_interval_s
    cursor: ReleaseCursor | None = None
    while request.transport is not None and not request.transport.is_closing():
        batch = await _released_after(request.app, cursor)
        if batch:
            cursor = batch[-1][0]
            try:
                await response.write(csv_text((v for _, v in batch), header=False).encode())
            except ConnectionResetError:
                break
        else:
            await asyncio.sleep(poll)
    return response
