"""The publisher's log says what changed, and is silent while nothing does."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from infra.net import free_port
from marketplace.ocean.asset import AssetChain
from marketplace.ocean.chain import ChainUnavailable
from marketplace.ocean.publish import worth_logging
from marketplace.ocean.publisher import Publisher, PublishResult
from marketplace.ocean.settings import OceanSettings
from marketplace.ocean.state import OceanState
from marketplace.storage import migrate
from tests.ocean.conftest import ListRowSource, distinct_rows

REPO = Path(__file__).resolve().parents[2]


def result(**changes: object) -> PublishResult:
    fields: dict[str, object] = dict(
        released=0, held=0, committed=0, csv_rows=5, sha256="ab" * 32, ref=None,
        chain_down=False, invalid=(), gas=(),
    )  # fmt: skip
    return PublishResult(**(fields | changes))


def test_only_runs_that_change_something_are_worth_a_line() -> None:
    idle = result()
    assert worth_logging(idle, None)  # the first run: where things stand
    assert not worth_logging(idle, idle)
    assert not worth_logging(result(chain_down=True), idle)  # the publisher warns once itself
    assert worth_logging(result(released=5), idle)
    assert worth_logging(result(committed=5), idle)
    assert worth_logging(result(invalid=(7,)), idle)
    assert worth_logging(result(gas=(object(),)), idle)  # a transaction went out
    assert worth_logging(result(held=2), idle)  # a row arrived and waits for its group
    assert not worth_logging(result(held=2), result(held=2))


class FlakyChain:
    """The real chain behind a switch: while `down`, every connection fails as a dead node's."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, settings: OceanSettings) -> AssetChain:
        if self.down:
            raise ChainUnavailable("no JSON-RPC answer (switched off)")
        return AssetChain(settings)


@pytest.mark.chain
def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    settings: OceanSettings, caplog: pytest.LogCaptureFixture
) -> None:
    chain = FlakyChain()
    source = ListRowSource(distinct_rows(range(3)))
    publisher = Publisher(settings, source, OceanState(settings.state_path), chain)
    caplog.set_level(logging.INFO, logger="marketplace.ocean.publisher")
    for _ in range(3):
        assert publisher.publish().chain_down
    chain.down = False
    back = publisher.publish()
    assert back.committed == 3 and not back.chain_down
    publisher.publish()

    lines = [r.getMessage() for r in caplog.records if r.name == "marketplace.ocean.publisher"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("chain unavailable, 3 rows stay queued")
    assert lines[1] == "chain answers again: 3 queued rows committed"


@pytest.mark.chain
def test_a_running_publisher_is_quiet_while_nothing_changes(
    settings: OceanSettings, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'market.sqlite3'}"
    migrate(db_url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_DOCTOR_")}
    log_path = tmp_path / "publisher.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "marketplace.ocean.publish", "--every", "0.2",
             "--metrics-port", str(port), "--db-url", db_url, "--rpc-url", settings.rpc_url,
             "--address-file", str(settings.address_file), "--data-dir", str(settings.data_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _runs(port) < 6:  # the first run (it creates the data NFT), five more idle
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = log_path.read_text().splitlines()
    assert process.returncode == 0, lines
    assert "pkg_resources" not in "\n".join(lines)
    assert sum("publish run:" in line for line in lines) == 1, lines  # the first run only
    assert sum("publishing every 0.2 s (k = 5)" in line for line in lines) == 1, lines


def _runs(port: int) -> float:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return 0.0
    [line] = [x for x in text.splitlines() if x.startswith("ocean_publish_runs_total ")]
    return float(line.split()[1])
