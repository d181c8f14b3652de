"""``GET /api/events``: a doctor's live view (pool, claims, profile, history) as server-sent events.

The page reads it with a streamed ``fetch`` that sends ``Authorization: Bearer <token>``
(``EventSource`` cannot send that header, and tokens never go in URLs). Each event carries
exactly the JSON of one REST answer, sent when it changes:

    event: me       data: GET /api/me
    event: pool     data: GET /api/pool
    event: claims   data: GET /api/claims
    event: history  data: GET /api/me/history

All four come first, then ``event: ready``. The stream recomputes the view every
``events_poll_s`` seconds, and at once after a claim or a vote in this process (``wake``),
but sends only what changed; a comment ``: keep-alive`` goes out every
``events_keepalive_s`` seconds on its own clock. So what it sends, and when, is a function of
what the REST answers show: before a case settles nothing in it depends on votes
(``tests/marketplace/test_sealed_panel.py`` snapshots the stream with the REST answers).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy.orm import Session

from infra.web import in_session
from marketplace import doctors, review
from marketplace.domain.policy import MarketPolicy
from marketplace.errors import DoctorNotFound
from marketplace.service.api import as_json, case_json, current_doctor
from marketplace.service.context import EXECUTOR, SESSIONS, SETTINGS, WAKEUP, Wakeup

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

#: The event names, in the order of the first batch.
EVENTS = ("me", "pool", "claims", "history")


@dataclass(frozen=True)
class DoctorView:
    """The four REST answers of one doctor, as the stream sends them."""

    me: dict[str, Any]
    pool: dict[str, Any]
    claims: dict[str, Any]
    history: dict[str, Any]


def doctor_view(
    session: Session, doctor_id: str, policy: MarketPolicy, passport_view_url: str
) -> DoctorView:
    """Everything the doctor's page shows, each part as its REST endpoint answers it."""
    pool = review.list_pool(session, doctor_id, policy)
    claims = review.my_claims(session, doctor_id)
    settled = review.history(session, doctor_id)
    return DoctorView(
        me=as_json(doctors.doctor_profile(session, doctor_id, policy)),
        pool={"cases": [case_json(c, passport_view_url) for c in pool]},
        claims={"cases": [case_json(c, passport_view_url) for c in claims]},
        history={"settled": [case_json(r, passport_view_url) for r in settled]},
    )


def sse(event: str, data: Any) -> bytes:
    """One server-sent event (one ``data:`` line: JSON has no raw newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def install(app: web.Application) -> None:
    """Mount ``GET /api/events``; open streams end when the server shuts down."""
    app[WAKEUP] = Wakeup()

    async def close_streams(app: web.Application) -> None:
        app[WAKEUP].close()

    app.on_shutdown.append(close_streams)
    app.add_routes(routes)


@routes.get("/api/events")
async def events(request: web.Request) -> web.StreamResponse:
    doctor_id = await current_doctor(request)
    app = request.app
    settings = app[SETTINGS]

    async def view() -> DoctorView:
        return await in_session(
            app[EXECUTOR],
            app[SESSIONS],
            doctor_view,
            doctor_id,
            settings.policy,
            settings.passport_view_url,
        )

    wakeup = app[WAKEUP]
    looked = wakeup.generation  # the wakes the view below has seen
    first = await view()  # errors (an unknown doctor) still answer as JSON here
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent: dict[str, Any] = {}
    next_keepalive = time.monotonic() + settings.events_keepalive_s
    current = first
    try:
        while True:
            chunks = []
            for name in EVENTS:
                data = getattr(current, name)
                if sent.get(name) != data:
                    chunks.append(sse(name, data))
                    sent[name] = data
            if "ready" not in sent:
                chunks.append(sse("ready", {}))
                sent["ready"] = True
            now = time.monotonic()
            if now >= next_keepalive:
                chunks.append(b": keep-alive\n\n")
                next_keepalive = now + settings.events_keepalive_s
            if chunks:
                await response.write(b"".join(chunks))
            wait_s = min(settings.events_poll_s, max(0.0, next_keepalive - time.monotonic()))
            await wakeup.wait(wait_s, looked)
            if wakeup.closed or request.transport is None or request.transport.is_closing():
                break
            looked = wakeup.generation
            current = await view()
    except ConnectionResetError:
        pass
    except DoctorNotFound:
        log.info("event stream ended: the doctor's account is gone")
    return response
