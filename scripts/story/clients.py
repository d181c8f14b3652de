"""The demo's clients: the doctors' HTTP client, the patients' curl, the CLIs, and polling.

Each raises :class:`DemoFailed` with what went wrong, so the demo stops at the first failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


class DemoFailed(RuntimeError):
    pass


def http(method: str, url: str, body: dict | None = None, token: str | None = None):
    """One HTTP request (the doctors' client); returns (status, parsed JSON or bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, ctype = (
                response.status,
                response.read(),
                response.headers.get_content_type(),
            )
    except urllib.error.HTTPError as error:
        status, raw, ctype = error.code, error.read(), error.headers.get_content_type()
    return status, (json.loads(raw) if ctype == "application/json" else raw)


def curl(*args: str) -> dict:
    """The patient's client: curl, JSON out; fails on HTTP errors."""
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--max-time", "30", *args],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise DemoFailed(f"curl {' '.join(args)} failed: {out.stdout} {out.stderr}")
    return json.loads(out.stdout)


def poll(what: str, check, timeout: float, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def run_cli(argv: list[str], env: dict | None = None) -> dict:
    return json.loads(run_text(argv, env))


def run_text(argv: list[str], env: dict | None = None) -> str:
    """A project command line's standard output (DemoFailed with its stderr when it fails)."""
    out = subprocess.run(
        [PY, *argv], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if out.returncode != 0:
        raise DemoFailed(f"{' '.join(argv[:3])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def json_or_none(url: str):
    try:
        status, body = http("GET", url)
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None
