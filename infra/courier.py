"""Messages between organisations over HTTP: the courier that empties an outbox, and the
inbox endpoint that applies each message once.

The courier re-seals every attempt with a fresh ``sent_at``, so a message that waited in the
outbox while its peer was down is fresh when it arrives; it keeps each destination's order
(oldest first, stopping at the first failure) and backs off per destination. The inbox
verifies the envelope, then records its id and applies it in one transaction: a duplicate
(a lost acknowledgement, a replay inside the window) answers ``{"accepted": false}`` and
changes nothing. Run one courier per outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.orm import Session

from infra.mailbox import (
    InboxMixin,
    OutboxMixin,
    PendingMessage,
    accept,
    mark_delivered,
    note_failure,
    undelivered,
)
from infra.messaging import (
    DEFAULT_WINDOW_S,
    MAX_MESSAGE_BYTES,
    Envelope,
    ForgedMessage,
    MalformedMessage,
    MessageRefused,
    MisaddressedMessage,
    StaleMessage,
    UnknownSender,
    check,
    check_public_key,
    new_message_id,
    open_sealed,
    public_key,
    seal,
)
from infra.web import in_session, json_error, status_for

log = logging.getLogger(__name__)

Handler = Callable[[Session, Envelope], None]
Sessions = Callable[[], Session]


class UnknownMessageType(MessageRefused):
    """A verified message of a type this receiver has no handler for."""

    code = "unknown_message_type"


#: Status of each refusal; nothing is recorded for any of them.
INBOX_ERROR_STATUS: Mapping[type[Exception], int] = {
    MalformedMessage: 400,
    UnknownMessageType: 400,
    UnknownSender: 401,
    ForgedMessage: 401,
    StaleMessage: 401,
    MisaddressedMessage: 403,
}


class Courier:
    """Delivers ``outbox_cls`` rows to ``destinations`` (org name -> base URL), forever."""

    def __init__(
        self,
        me: str,
        private_hex: str,
        destinations: Mapping[str, str],
        sessions: Sessions,
        outbox_cls: type[OutboxMixin],
        executor: Executor,
        *,
        poll_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        batch: int = 50,
        clock: Callable[[], float] = time.time,
    ) -> None:
        public_key(private_hex)  # fail at start-up, not at the first delivery
        for destination in destinations:  # names a receiver would refuse, likewise
            check(Envelope(new_message_id(), "probe", me, destination, 0.0, {}))
        self.me, self._private_hex = me, private_hex
        self.destinations = {name: url.rstrip("/") for name, url in destinations.items()}
        self._sessions, self._outbox_cls, self._executor = sessions, outbox_cls, executor
        self.poll_s, self.max_backoff_s, self.timeout_s = poll_s, max_backoff_s, timeout_s
        self.batch, self._clock = batch, clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    def wake(self) -> None:
        """Deliver now rather than at the next poll (call after committing a post; any thread).

        A destination that is backing off after a failure keeps waiting.
        """
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._set_wakeups)

    async def start(self) -> None:
        """Start one delivery task per destination on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        for destination, url in self.destinations.items():
            self._wakeups[destination] = asyncio.Event()
            self._tasks.append(
                asyncio.create_task(self._run(destination, url), name=f"courier-{destination}")
            )

    async def stop(self) -> None:
        """Cancel the delivery tasks and close the HTTP session (undelivered rows stay queued)."""
        self._loop = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _set_wakeups(self) -> None:
        for wakeup in self._wakeups.values():
            wakeup.set()

    async def _run(self, destination: str, url: str) -> None:
        wakeup = self._wakeups[destination]
        backoff = 0.0
        while True:
            wakeup.clear()
            try:
                delivered, complete = await self._deliver_batch(destination, url)
            except Exception:  # the outbox's database: log and retry like a failed delivery
                log.exception("courier: reading the outbox for %s failed", destination)
                delivered, complete = 0, False
            if not complete:
                backoff = min(self.max_backoff_s, backoff * 2 if backoff else self.poll_s)
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            if delivered == self.batch:
                continue  # a full batch: there may be more
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self.poll_s)

    async def _deliver_batch(self, destination: str, url: str) -> tuple[int, bool]:
        """Send pending messages in order; (how many were delivered, whether all of them)."""
        pending = await in_session(
            self._executor,
            self._sessions,
            undelivered,
            self._outbox_cls,
            destination,
            self.batch,
        )
        for count, message in enumerate(pending):
            error = await self._send(url, message)
            if error is None:
                await in_session(self._executor, self._sessions, self._mark_delivered, message)
                continue
            log.warning(
                "courier: message %s (%s) to %s not delivered: %s",
                message.message_id,
                message.type,
                destination,
                error,
            )
            await in_session(self._executor, self._sessions, self._note_failure, message, error)
            return count, False
        return len(pending), True

    async def _send(self, url: str, message: PendingMessage) -> str | None:
        """POST one freshly sealed message; None on a 2xx, else why not (no secrets, no body)."""
        assert self._http is not None, "courier not started"
        envelope = Envelope(
            message_id=message.message_id,
            type=message.type,
            sender=self.me,
            audience=message.destination,
            sent_at=self._clock(),
            body=message.body,
        )
        try:
            raw = seal(envelope, self._private_hex)
            async with self._http.post(
                f"{url}/messages", data=raw, headers={"Content-Type": "application/json"}
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status} {await _error_code(response)}".rstrip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
        except ValueError as exc:  # an unsealable row (checked at post, so not expected)
            return f"unsealable: {exc}"

    def _mark_delivered(self, session: Session, message: PendingMessage) -> None:
        mark_delivered(session, self._outbox_cls, message.message_id, _utc(self._clock()))
        session.commit()

    def _note_failure(self, session: Session, message: PendingMessage, error: str) -> None:
        note_failure(session, self._outbox_cls, message.message_id, error)
        session.commit()


def courier_ctx(courier: Courier) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry that runs ``courier`` while the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await courier.start()
        try:
            yield
        finally:
            await courier.stop()

    return ctx


def add_inbox_route(
    app: web.Application,
    *,
    me: str,
    peers: Mapping[str, str],
    sessions: Sessions,
    inbox_cls: type[InboxMixin],
    executor: Executor,
    handlers: Mapping[str, Handler],
    path: str = "/messages",
    window_s: float = DEFAULT_WINDOW_S,
    clock: Callable[[], float] = time.time,
) -> None:
    """Add ``POST path``: verify, then record the id and run ``handlers[type]`` in one commit.

    200 ``{"accepted": true}`` (applied now) or ``{"accepted": false}`` (a duplicate, no
    effect); refusals per ``INBOX_ERROR_STATUS``; 500 when the handler raised (all rolled
    back, so the sender's retry applies it).
    """
    for public_hex in peers.values():
        check_public_key(public_hex)
    peers, handlers = dict(peers), dict(handlers)

    def apply(session: Session, envelope: Envelope) -> bool:
        if not accept(session, inbox_cls, envelope, _utc(clock())):
            return False
        with _one_transaction(session):
            handlers[envelope.type](session, envelope)
        session.commit()
        return True

    async def receive(request: web.Request) -> web.Response:
        try:
            if (request.content_length or 0) > MAX_MESSAGE_BYTES:
                raise MalformedMessage(f"message larger than {MAX_MESSAGE_BYTES} bytes")
            raw = await request.read()
            envelope = open_sealed(raw, me=me, peers=peers, now=clock(), window_s=window_s)
            if envelope.type not in handlers:
                raise UnknownMessageType(f"no handler for message type {envelope.type!r}")
        except MessageRefused as exc:
            log.warning("inbox: refused a message (%s): %s", exc.code, exc)
            status = status_for(exc, INBOX_ERROR_STATUS) or 400
            return json_error(status, exc.code, str(exc))
        try:
            accepted = await in_session(executor, sessions, apply, envelope)
        except Exception:
            log.exception(
                "inbox: handler for message %s (%s) from %s failed; rolled back",
                envelope.message_id,
                envelope.type,
                envelope.sender,
            )
            return json_error(500, "handler_failed", "message not applied; retry later")
        log.info(
            "inbox: message %s (%s) from %s %s",
            envelope.message_id,
            envelope.type,
            envelope.sender,
            "applied" if accepted else "was a duplicate",
        )
        return web.json_response({"accepted": accepted})

    app.router.add_post(path, receive)


@contextlib.contextmanager
def _one_transaction(session: Session) -> Iterator[None]:
    """Keep a handler inside the inbox's transaction: its commit is refused (raised before
    anything is written), and ending the transaction itself is an error, so the message's
    effect and its inbox row always commit or roll back together."""
    transaction = session.get_transaction()

    def refuse(_session: Session) -> None:
        raise RuntimeError("a message handler must not commit; the inbox commits")

    event.listen(session, "before_commit", refuse)
    try:
        yield
    finally:
        event.remove(session, "before_commit", refuse)
    if session.get_transaction() is not transaction:
        raise RuntimeError("a message handler must not end the inbox's transaction")


async def _error_code(response: aiohttp.ClientResponse) -> str:
    """The ``error`` code of a JSON error answer, if any (short; the detail is not kept)."""
    with contextlib.suppress(Exception):
        document: Any = json.loads(await response.content.read(4096))
        code = document.get("error") if isinstance(document, dict) else None
        if isinstance(code, str):
            return code[:64]
    return ""


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
