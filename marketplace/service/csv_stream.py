"""``GET /decisions.csv``: the anonymized research rows as a live CSV stream.

By default the response stays open and new rows are appended as cases settle
(chunked transfer, the server polls the database); ``?follow=0`` returns the
current rows and ends. Rows carry no identifiers, so no token is required.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from infra.web import in_session
from marketplace import research
from marketplace.domain.anonymize import csv_text
from marketplace.service.context import EXECUTOR, SESSIONS, SETTINGS

routes = web.RouteTableDef()
CSV_TYPE = "text/csv"


async def _rows_after(app: web.Application, last: int) -> list[tuple[int, list[str]]]:
    return await in_session(app[EXECUTOR], app[SESSIONS], research.rows_after, last)


async def _all_rows(app: web.Application) -> list[list[str]]:
    rows: list[list[str]] = []
    last = 0
    while True:
        batch = await _rows_after(app, last)
        if not batch:
            return rows
        rows.extend(values for _, values in batch)
        last = batch[-1][0]


@routes.get("/decisions.csv")
async def decisions_csv(request: web.Request) -> web.StreamResponse:
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
    last = 0
    while request.transport is not None and not request.transport.is_closing():
        batch = await _rows_after(request.app, last)
        if batch:
            last = batch[-1][0]
            try:
                await response.write(csv_text((v for _, v in batch), header=False).encode())
            except ConnectionResetError:
                break
        else:
            await asyncio.sleep(poll)
    return response
