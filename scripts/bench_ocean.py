"""Benchmark: time and gas of the Ocean side's deploy, publish, buy + download.

    .venv/bin/python scripts/bench_ocean.py [--rows 50 --k 5 --out var/ocean/bench.json]

Starts its own ganache in a temporary directory, runs the whole flow once with the real pieces
of `marketplace.ocean` (no shortcuts), prints the figures as JSON and saves them to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.net import free_port  # noqa: E402
from marketplace import researcher  # noqa: E402
from marketplace.domain.anonymize import CSV_COLUMNS, anonymize  # noqa: E402
from marketplace.ocean.chain import connect, wallet  # noqa: E402
from marketplace.ocean.deploy import deploy_contracts, fund_ocean  # noqa: E402
from marketplace.ocean.node import GanacheNode  # noqa: E402
from marketplace.ocean.publisher import Publisher  # noqa: E402
from marketplace.ocean.serve import create_download_app  # noqa: E402
from marketplace.ocean.settings import ONE_TOKEN, OceanSettings, dev_key  # noqa: E402
from marketplace.ocean.state import OceanState  # noqa: E402


def settled_row(i: int) -> dict[str, object]:
    """Row `i` as the marketplace hands it to the publisher (its own anonymization)."""
    record = anonymize(
        settled_at=datetime(2026, 11, 20 + i % 3, 12, tzinfo=UTC),
        backbone="resnet18",
        model_label="tumor",
        confidence=0.95,
        diagnosis="tumor" if i % 4 else "no_tumor",
        reviewers=3,
        agreement=1.0 if i % 4 else 2 / 3,
    )
    return {"row_id": i} | dict(zip(CSV_COLUMNS, record.as_csv_values(), strict=True))


class _Rows:
    """The publisher's RowSource over a list of settled rows."""

    def __init__(self, n: int) -> None:
        self.rows = [settled_row(i) for i in range(n)]
        self.marked: set[int] = set()

    def pending_rows(self, limit: int) -> list[dict[str, object]]:
        return [r for r in self.rows if r["row_id"] not in self.marked][:limit]

    def mark_published(self, row_ids: list[int], ref: str) -> None:
        self.marked.update(row_ids)


def _serve(settings: OceanSettings) -> tuple[asyncio.AbstractEventLoop, web.AppRunner]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    runner = web.AppRunner(create_download_app(settings))
    port = int(settings.service_url.rsplit(":", 1)[1])

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    return loop, runner


def run(rows: int, k: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"rows": rows, "k": k}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        node = GanacheNode(db_path=root / "db")
        t = time.perf_counter()
        node.start()
        figures["node_start_s"] = round(time.perf_counter() - t, 3)
        try:
            w3 = connect(node.url)
            owner = wallet(dev_key(0))
            report = deploy_contracts(w3, owner, root / "address.json")
            figures["deploy"] = {
                "seconds": round(report.seconds, 3),
                "transactions": len(report.gas),
                "gas": report.total_gas,
            }
            fund_ocean(
                w3, owner, report.addresses["Ocean"], wallet(dev_key(1)).address, 100 * ONE_TOKEN
            )
            settings = OceanSettings(
                rpc_url=node.url,
                address_file=root / "address.json",
                data_dir=root / "ocean",
                k=k,
                service_url=f"http://127.0.0.1:{free_port()}",
            )
            publisher = Publisher(settings, _Rows(rows), OceanState(settings.state_path))
            t = time.perf_counter()
            first = publisher.publish()
            figures["first_publish"] = {
                "seconds": round(time.perf_counter() - t, 3),
                "rows": first.csv_rows,
                "gas": {g.step: g.gas_used for g in first.gas},
            }
            source = publisher.source
            assert isinstance(source, _Rows)
            source.rows += [dict(source.rows[0], row_id=rows + i) for i in range(k)]
            t = time.perf_counter()
            more = publisher.publish()
            figures["append_publish"] = {
                "seconds": round(time.perf_counter() - t, 3),
                "rows": more.csv_rows,
                "gas": {g.step: g.gas_used for g in more.gas},
            }
            loop, runner = _serve(settings)
            try:
                t = time.perf_counter()
                purchase = researcher.buy(settings)
                got = researcher.download(settings, purchase.order_tx, root / "out.csv")
                figures["buy_download"] = {
                    "seconds": round(time.perf_counter() - t, 3),
                    "buy_seconds": purchase.seconds,
                    "download_seconds": got.seconds,
                    "gas": purchase.gas,
                    "paid_ocean_wei": purchase.paid_ocean_wei,
                    "rows": got.rows,
                }
            finally:
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
                loop.call_soon_threadsafe(loop.stop)
        finally:
            node.stop()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("var/ocean/bench.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = run(args.rows, args.k)
    figures["publish_seconds_note"] = "first publish includes NFT+datatoken+exchange creation"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))  # a benchmark script prints its figures


if __name__ == "__main__":
    main()
