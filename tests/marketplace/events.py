"""Reading a doctor's ``GET /api/events`` stream as the page does: one HTTP request with the
bearer header, the text/event-stream parsed into (event, JSON) pairs by a reader thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests


def parse_events(lines: Any) -> Any:
    """Yield ``(event, data)`` for each event of a text/event-stream (comments yield
    ``(":", text)``, so keep-alives can be seen)."""
    name, data = "message", []
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if line == "":
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith(":"):
            yield ":", line[1:].strip()
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


def first_batch(url: str, token: str) -> dict[str, Any]:
    """The events a stream sends before ``ready`` (the doctor's whole view), then close it."""
    seen: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    with requests.get(f"{url}/api/events", headers=headers, stream=True, timeout=30) as reply:
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        for name, data in parse_events(reply.iter_lines()):
            if name == "ready":
                return seen
            if name != ":":
                assert name not in seen, f"{name} twice before ready"
                seen[name] = data
    raise AssertionError("stream ended before ready")


class EventLog:
    """A stream held open in a thread; ``events`` grows as events arrive."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[tuple[str, Any]] = []
        #: True once the server ended the stream properly (its last chunk, not a reset).
        self.ended_cleanly = False
        self._reply = requests.get(
            f"{url}/api/events",
            headers={"Authorization": f"Bearer {token}"},
            stream=True,
            timeout=30,
        )
        assert self._reply.status_code == 200, self._reply.text
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for name, data in parse_events(self._reply.iter_lines()):
                self.events.append((name, data))
            self.ended_cleanly = True
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed by close()

    def latest(self, name: str) -> Any:
        found = [data for event, data in self.events if event == name]
        return found[-1] if found else None

    def wait_for(self, check: Callable[[EventLog], bool], timeout: float = 30.0) -> None:
        """Poll until ``check(self)`` holds (a deadline, not a sleep)."""
        deadline = time.monotonic() + timeout
        while not check(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"stream never got there; last events {self.events[-4:]}")
            time.sleep(0.05)

    def close(self) -> None:
        self._reply.close()
        self._thread.join(5)

    def join(self, timeout: float = 30.0) -> bool:
        """Wait for the stream to end by itself; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
