"""Download service edges: not yet published, bad input, chain down."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from marketplace.ocean.node import GanacheNode, free_port
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
