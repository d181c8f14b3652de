"""Run a real aiohttp application on 127.0.0.1 and an ephemeral port in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from aiohttp import web


@contextmanager
def serve(app: web.Application, timeout: float = 30.0, port: int = 0) -> Iterator[str]:
    """Start ``app`` (running its cleanup_ctx), yield its base URL, then shut it down.

    ``port`` 0 takes an ephemeral port; a given port lets a test stop a service and start
    it again where its peers expect it.
    """
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    started = threading.Event()
    failure: list[BaseException] = []
    base: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base.append(f"http://127.0.0.1:{bound}")

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="test-server", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise TimeoutError("server did not start")
    if failure:
        raise failure[0]
    try:
        yield base[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


@dataclass(frozen=True)
class Api:
    """Requests to a served app: ``api("GET", "/api/pool", token)`` (a bearer token if given)."""

    url: str

    def __call__(
        self, method: str, path: str, token: str | None = None, **kw: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kw)
