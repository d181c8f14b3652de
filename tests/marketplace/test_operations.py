"""The doctor service's reference document and operator metrics, against a real database."""

from __future__ import annotations

import asyncio
import time

import requests
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from infra.messaging import generate_key
from infra.openapi import load_spec, served_routes, undocumented_routes
from marketplace.service import MarketplaceSettings, create_app
from marketplace.service.app import OPENAPI_PATH
from tests.marketplace.flows import make_doctors, open_case
from tests.marketplace.servers import serve
from tests.marketplace.test_review import _panel

MARKET_KEY = generate_key()


def _settings(db_url: str = "sqlite://", **kw) -> MarketplaceSettings:
    return MarketplaceSettings(db_url=db_url, signing_key=MARKET_KEY, **kw)


def test_openapi_document_describes_exactly_the_served_routes(db_url) -> None:
    spec = load_spec(OPENAPI_PATH)
    app = create_app(_settings(db_url))
    assert undocumented_routes(app, spec) == set()
    documented = {(m, path) for path, item in spec["paths"].items() for m in item}
    assert documented == served_routes(app)  # nothing documented that is not served
    with serve(app) as url:
        assert requests.get(f"{url}/openapi.json", timeout=10).json() == spec


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_settlements_votes_and_requests(db_url, session) -> None:
    with serve(create_app(_settings(db_url, metrics_interval_s=0.05))) as url:
        first = requests.get(f"{url}/metrics", timeout=10)
        assert first.status_code == 200 and first.headers["Content-Type"].startswith("text/plain")
        assert _sample(first.text, "crypto_doctor_settlements_total") == 0
        assert _sample(first.text, 'crypto_doctor_cases{status="open"}') == 0

        case_id = open_case(session)  # settled by another session's writes: same database
        _panel(session, case_id, make_doctors(session, 3), ["tumor"] * 3)
        open_case(session)
        assert requests.get(f"{url}/api/pool", timeout=10).status_code == 401

        deadline, text = time.monotonic() + 20, ""
        while time.monotonic() < deadline:
            text = requests.get(f"{url}/metrics", timeout=10).text
            # Both writes above are visible to a refresh (they commit one after the other).
            settled = _sample(text, "crypto_doctor_settlements_total") == 1
            if settled and _sample(text, 'crypto_doctor_cases{status="open"}') == 1:
                break
            time.sleep(0.05)
    assert _sample(text, "crypto_doctor_settlements_total") == 1
    assert _sample(text, "crypto_doctor_votes_total") == 3
    assert _sample(text, 'crypto_doctor_cases{status="settled"}') == 1
    assert _sample(text, 'crypto_doctor_cases{status="open"}') == 1
    assert _sample(text, 'crypto_doctor_cases{status="queued"}') is None  # the clinic's status
    assert _sample(text, "crypto_doctor_outbox_undelivered") == 4  # 3 seats, 1 diagnosis
    pool = 'crypto_doctor_http_request_duration_seconds_count{method="GET",route="/api/pool",status="401"}'
    assert _sample(text, pool) == 1


def _metrics_status(app: web.Application, remote: str, headers: dict[str, str]) -> int:
    async def call() -> int:
        request = make_mocked_request("GET", "/metrics", headers=headers, app=app)
        request = request.clone(remote=remote)
        match = await app.router.resolve(request)
        response = await match.handler(request)
        return response.status

    return asyncio.run(call())


def test_metrics_from_other_hosts_need_the_operator_token() -> None:
    app = create_app(_settings(operator_token="op-token-123"))
    far = "203.0.113.7"
    assert _metrics_status(app, far, {}) == 403
    assert _metrics_status(app, far, {"Authorization": "Bearer wrong"}) == 403
    assert _metrics_status(app, far, {"Authorization": "Bearer op-token-123"}) == 200
    assert _metrics_status(app, "127.0.0.1", {}) == 200
    no_token = create_app(_settings())  # no operator token configured: loopback only
    assert _metrics_status(no_token, far, {"Authorization": "Bearer "}) == 403
