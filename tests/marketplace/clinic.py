"""A stand-in for the clinic's end of the message link: real HTTP, real signatures.

It seals ``case.opened`` with the clinic's key, as the clinic's courier does, and its
``POST /messages`` verifies what the marketplace sends with the marketplace's *public* key
(``infra.messaging.open_sealed``), keeping each message id once, like an inbox.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from infra.messaging import Envelope, MessageRefused, new_message_id, open_sealed, seal
from marketplace.messages import CLINIC, MARKETPLACE, CaseOpened


def sealed_case_opened(
    message: CaseOpened,
    clinic_key: str,
    *,
    sender: str = CLINIC,
    audience: str = MARKETPLACE,
    sent_at: float | None = None,
) -> bytes:
    """The bytes the clinic's courier POSTs to the marketplace's ``/messages``."""
    envelope = Envelope(
        message_id=new_message_id(),
        type=CaseOpened.TYPE,
        sender=sender,
        audience=audience,
        sent_at=time.time() if sent_at is None else sent_at,
        body=message.body(),
    )
    return seal(envelope, clinic_key)


@dataclass
class FakeClinic:
    """Receives the marketplace's messages; ``refuse`` makes it answer 503 (a clinic that is
    up but not applying), to exercise retries."""

    market_public_key: str
    received: list[Envelope] = field(default_factory=list)
    deliveries: int = 0
    refused: int = 0
    busy: int = 0
    refuse: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        async def messages(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                envelope = open_sealed(
                    raw, me=CLINIC, peers={MARKETPLACE: self.market_public_key}, now=time.time()
                )
            except MessageRefused as exc:
                with self._lock:
                    self.refused += 1
                return web.json_response({"error": exc.code, "detail": str(exc)}, status=401)
            if self.refuse:
                with self._lock:
                    self.busy += 1
                return web.json_response({"error": "busy", "detail": "later"}, status=503)
            with self._lock:
                self.deliveries += 1
                if any(e.message_id == envelope.message_id for e in self.received):
                    return web.json_response({"accepted": False})
                self.received.append(envelope)
            return web.json_response({"accepted": True})

        app = web.Application()
        app.router.add_post("/messages", messages)
        return app

    def bodies(self, type: str) -> list[dict]:
        with self._lock:
            return [e.body for e in self.received if e.type == type]
