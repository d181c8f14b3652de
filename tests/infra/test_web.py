"""The shared HTTP plumbing: JSON bodies are read safely, whatever a client sends."""

import pytest
import requests
from aiohttp import web

from infra.web import error_middleware, read_json
from tests.marketplace.servers import serve


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": await read_json(request)})

    app = web.Application(middlewares=[error_middleware({})])
    app.router.add_post("/echo", echo)
    return app


@pytest.fixture(scope="module")
def url():
    with serve(echo_app()) as base:
        yield base


@pytest.mark.parametrize("body", [b"[" * 20_000, b'{"a":' * 20_000, b"not json", b"\xff\xfe"])
def test_absurd_or_malformed_json_is_a_400_not_a_crash(url, body):
    reply = requests.post(f"{url}/echo", data=body, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_json"


def test_ordinary_json_is_read(url):
    body = {"case_id": "x", "nested": [[1, [2]]], "text": "[[[[ not nesting ]]]]"}
    reply = requests.post(f"{url}/echo", json=body, timeout=10)
    assert reply.status_code == 200 and reply.json() == {"got": body}
