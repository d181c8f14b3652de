"""Lets ``GET /case/{id}?wait=N`` answer as soon as the case's outcome is recorded.

Lives on the event loop; the thread that records predictions reaches it only through
:meth:`OutcomeWaiters.notify_threadsafe`. Outcomes other party pairs record (other processes)
reach it through the patient API's watcher, which asks the store about :meth:`waiting_ids`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class OutcomeWaiters:
    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Event, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_notify(self, listener: Callable[[], None]) -> None:
        """Also call ``listener`` on the loop whenever outcomes are recorded (e.g. the courier)."""
        self._listeners.append(listener)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop the waiting handlers run on."""
        self._loop = loop

    def register(self, case_id: str) -> asyncio.Event:
        event, count = self._waiting.get(case_id, (asyncio.Event(), 0))
        self._waiting[case_id] = (event, count + 1)
        return event

    def release(self, case_id: str) -> None:
        event, count = self._waiting[case_id]
        if count == 1:
            del self._waiting[case_id]
        else:
            self._waiting[case_id] = (event, count - 1)

    def waiting_ids(self) -> list[str]:
        """Cases someone is waiting on right now."""
        return list(self._waiting)

    def notify(self, case_ids: list[str]) -> None:
        """Wake whoever waits on these cases (on the loop)."""
        self._notify(case_ids)

    def notify_threadsafe(self, case_ids: list[str]) -> None:
        """Wake whoever waits on these cases (callable from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._notify, case_ids)

    def _notify(self, case_ids: list[str]) -> None:
        for listener in self._listeners:
            listener()
        for case_id in case_ids:
            if case_id in self._waiting:
                self._waiting[case_id][0].set()
