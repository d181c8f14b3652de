"""The patient API's listening socket, held by the supervisor, and its stand-in while party 0 is down.

The supervisor binds the patient port once and hands the socket to every party 0 it starts, so
the port never closes while the parties restart: a patient is never refused. From the moment a
party 0 dies until its successor says it serves, the supervisor answers on the same socket
itself: ``503 {"error": "restarting", ...}`` with ``Retry-After``, on its own thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from infra.web import ServiceRunner, json_error, secure_headers, start_service

#: What a patient is told to wait before trying again (a restart of the pair takes seconds).
RETRY_AFTER_S = 5
#: After the stand-in stops accepting, how long requests on connections it already accepted
#: may take to arrive and get their 503 (instead of a closed connection).
HANDOVER_S = 0.5
T = TypeVar("T")


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (raises ``OSError`` when the port is taken)."""
    return socket.create_server((host, port), backlog=128)


async def _restarting(request: web.Request) -> web.Response:
    response = json_error(
        503, "restarting", "the clinic's service is restarting; try again in a few seconds"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    # Close the connection: the next request must reach party 0 once it is back.
    response.force_close()
    return response


def standby_app() -> web.Application:
    """Every method and path: 503 with ``Retry-After``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _restarting)
    secure_headers(app)
    return app


class Standby:
    """Answers 503 on the held socket between :meth:`start` and :meth:`stop` (both idempotent)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="standby", daemon=True)
        self._thread.start()
        self._runner: ServiceRunner | None = None

    @property
    def answering(self) -> bool:
        return self._runner is not None

    def start(self) -> None:
        if self._runner is None:
            # A duplicate descriptor: stopping closes it, never the socket party 0 serves on.
            self._runner = self._call(
                start_service(standby_app(), sock=self._sock.dup(), shutdown_timeout=1.0)
            )

    def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._call(self._hand_over(runner))

    @staticmethod
    async def _hand_over(runner: ServiceRunner) -> None:
        # Stop accepting first: new connections wait in the socket's queue for party 0.
        for site in list(runner.sites):
            await site.stop()
        await asyncio.sleep(HANDOVER_S)
        await runner.cleanup()

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=30)
