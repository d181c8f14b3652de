"""Download service edges: not yet published, bad input, chain down, its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from infra.net import free_port
from marketplace.ocean.node import GanacheNode
from marketplace.ocean.settings import OceanSettings
from tests.ocean.conftest import ServiceThread

pytestmark = pytest.mark.chain
TX = "0x" + "12" * 32
SIG = "0x" + "ab" * 65


def test_nothing_published_yet_is_404_and_bad_input_400(settings: OceanSettings, service) -> None:
    base = settings.service_url
    assert requests.get(base + "/", timeout=10).status_code == 200  # Aquarius liveness probe
    assert requests.get(base + "/asset", timeout=10).json()["error"] == "not_published"
    bad = requests.get(base + "/initialize", params={"consumer": "bob"}, timeout=10)
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_consumer")
    not_json = requests.post(base + "/download", data=b"{", timeout=10)
    assert (not_json.status_code, not_json.json()["error"]) == (400, "bad_request")
    unpublished = requests.post(
        base + "/download", json={"order_tx": TX, "signature": SIG}, timeout=10
    )
    assert (unpublished.status_code, unpublished.json()["error"]) == (404, "not_published")
    unsigned = requests.post(base + "/download", json={"order_tx": TX}, timeout=10)
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "unsigned")


def metric(text: str, name: str) -> float:
    """The value of one sample line (`name{labels} value`) of a Prometheus text page."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def test_metrics_count_refusals_by_reason_and_time_requests(
    settings: OceanSettings, service
) -> None:
    base = settings.service_url
    for _ in range(2):
        requests.post(base + "/download", json={"order_tx": TX, "signature": SIG}, timeout=10)
    requests.post(base + "/download", json={"order_tx": "nope"}, timeout=10)
    requests.get(base + "/asset", timeout=10)  # refused too, but not a download: not counted

    page = requests.get(base + "/metrics", timeout=10)  # from loopback: no token needed
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    text = page.text
    assert metric(text, 'ocean_orders_refused_total{reason="not_published"}') == 2
    assert metric(text, 'ocean_orders_refused_total{reason="bad_order_tx"}') == 1
    assert metric(text, 'ocean_request_seconds_count{route="/download"}') == 3
    assert metric(text, 'ocean_request_seconds_count{route="/asset"}') == 1
    assert metric(text, "ocean_downloads_total") == 0


def test_chain_down_is_503_not_a_crash(tmp_path: Path) -> None:
    dead = GanacheNode(db_path=tmp_path / "db")  # never started: nothing listens on its port
    dead.port = free_port()
    settings = OceanSettings(
        rpc_url=dead.url,
        address_file=tmp_path / "address.json",
        data_dir=tmp_path / "ocean",
        service_url=f"http://127.0.0.1:{free_port()}",
    )
    svc = ServiceThread(settings)
    svc.start()
    try:
        reply = requests.post(
            settings.service_url + "/download", json={"order_tx": TX, "signature": SIG}, timeout=30
        )
        assert (reply.status_code, reply.json()["error"]) == (503, "chain_unavailable")
        assert requests.get(settings.service_url + "/", timeout=10).status_code == 200
    finally:
        svc.stop()


def test_mounted_under_a_prefix_ocean_lib_still_connects(chain, tmp_path: Path) -> None:
    """The integrator mounts the app into party 1's service; ocean-lib's probe must still pass."""
    import asyncio
    import threading

    from aiohttp import web
    from ocean_lib.ocean.ocean import Ocean

    from marketplace.ocean.chain import ocean_config
    from marketplace.ocean.serve import create_download_app

    port = free_port()
    settings = OceanSettings(
        rpc_url=chain.node.url,
        address_file=chain.address_file,
        data_dir=tmp_path / "ocean",
        service_url=f"http://127.0.0.1:{port}/ocean",
    )
    parent = web.Application()
    parent.add_subapp("/ocean", create_download_app(settings))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(parent)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        ocean = Ocean(ocean_config(settings))  # raises if the Aquarius probe gets no 200
        assert ocean.OCEAN_address == chain.deploy.addresses["Ocean"]
        reply = requests.get(settings.service_url + "/asset", timeout=10)
        assert reply.json()["error"] == "not_published"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
