"""Fixtures for the Ocean tests: a real ganache node, Ocean's contracts, the download service.

Everything runs on 127.0.0.1 with ephemeral ports and temporary directories, and is stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest
from aiohttp import web

from infra.net import free_port
from marketplace.domain.anonymize import CSV_COLUMNS, anonymize
from marketplace.ocean.chain import connect, wallet
from marketplace.ocean.deploy import DeployReport, deploy_contracts, fund_ocean
from marketplace.ocean.node import GanacheNode
from marketplace.ocean.serve import create_download_app
from marketplace.ocean.settings import ONE_TOKEN, OceanSettings, dev_key


class ListRowSource:
    """The publisher's RowSource over a plain list (stands in for the marketplace's storage)."""

    def __init__(self, rows: list[dict[str, object]] | None = None) -> None:
        self.rows: list[dict[str, object]] = list(rows or [])
        self.marked: dict[int, str] = {}
        self.mark_calls = 0

    def pending_rows(self, limit: int) -> list[dict[str, object]]:
        return [r for r in self.rows if r["row_id"] not in self.marked][:limit]

    def mark_published(self, row_ids: list[int], ref: str) -> None:
        self.mark_calls += 1
        for rid in row_ids:
            self.marked[rid] = ref


def research_row(
    row_id: int,
    day: date = date(2026, 11, 20),
    *,
    model_label: str = "tumor",
    confidence: float = 0.85,
    diagnosis: str = "tumor",
    reviewers: int = 3,
    agreeing: int | None = None,
) -> dict[str, object]:
    """A settled case as the marketplace hands it to the publisher: its own anonymization,
    rendered as `marketplace.research.unpublished_rows` does (row id + CSV strings)."""
    record = anonymize(
        settled_at=datetime.combine(day, time(12), tzinfo=UTC),
        backbone="resnet18",
        model_label=model_label,
        confidence=confidence,
        diagnosis=diagnosis,
        reviewers=reviewers,
        agreement=(reviewers if agreeing is None else agreeing) / reviewers,
    )
    return {"row_id": row_id} | dict(zip(CSV_COLUMNS, record.as_csv_values(), strict=True))


def distinct_rows(ids: range) -> list[dict[str, object]]:
    """Rows of one k-anonymity group that differ in content (model label and confidence)."""
    return [
        research_row(
            i,
            model_label=("tumor", "no_tumor")[i % 2],
            diagnosis=("tumor", "no_tumor")[i % 2],
            confidence=0.55 + 0.1 * (i // 2 % 5),
        )
        for i in ids
    ]


@dataclasses.dataclass
class Chain:
    node: GanacheNode
    address_file: Path
    deploy: DeployReport


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("chain")
    node = GanacheNode(db_path=root / "db")
    node.start()
    try:
        w3 = connect(node.url)
        owner = wallet(dev_key(0))
        address_file = root / "address.json"
        report = deploy_contracts(w3, owner, address_file)
        fund_ocean(
            w3, owner, report.addresses["Ocean"], wallet(dev_key(1)).address, 1000 * ONE_TOKEN
        )
        fund_ocean(
            w3, owner, report.addresses["Ocean"], wallet(dev_key(2)).address, 1000 * ONE_TOKEN
        )
        yield Chain(node, address_file, report)
    finally:
        node.stop()


@pytest.fixture
def settings(chain: Chain, tmp_path: Path) -> OceanSettings:
    """Fresh data dir per test (so each test publishes its own data NFT on the shared chain)."""
    return OceanSettings(
        rpc_url=chain.node.url,
        address_file=chain.address_file,
        data_dir=tmp_path / "ocean",
        k=3,
        service_url=f"http://127.0.0.1:{free_port()}",
    )


class ServiceThread:
    """The download app on its own event loop in a thread, on the port of settings.service_url."""

    def __init__(self, settings: OceanSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        port = int(self.settings.service_url.rsplit(":", 1)[1])

        async def _start() -> None:
            self.runner = web.AppRunner(create_download_app(self.settings))
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", port).start()

        asyncio.run_coroutine_threadsafe(_start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture
def service(settings: OceanSettings) -> Iterator[ServiceThread]:
    svc = ServiceThread(settings)
    svc.start()
    yield svc
    svc.stop()
