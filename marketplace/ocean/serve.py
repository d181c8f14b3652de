"""The download endpoint that replaces Ocean's Provider offline.

`create_download_app(settings)` is an aiohttp application, runnable standalone
(`python -m marketplace.ocean.serve --port 8082`) or mounted into another app with
`app.add_subapp("/ocean", create_download_app(settings))`. Routes:

- `GET /`            service + asset summary (also answers ocean-lib's Aquarius liveness probe);
- `GET /asset`       the DDO, datatoken, exchange id and current on-chain digest;
- `GET /initialize`  a provider fee signed by the service key, valid for the order timeout;
- `POST /download`   `{"order_tx", "signature"}`: verifies the order on chain and streams the CSV.

Chain calls run in a small dedicated thread pool so they never block the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from ocean_lib.ocean.util import get_ocean_token_address
from web3 import Web3

from marketplace.ocean.asset import DIGEST_KEY, ddo_for
from marketplace.ocean.chain import ChainUnavailable, connect, ocean_config
from marketplace.ocean.dataset import digest
from marketplace.ocean.orders import (
    OrderRejected,
    chain_now,
    check_order,
    parse_download_request,
    provider_fee,
    read_order,
    recover_signer,
)
from marketplace.ocean.settings import OceanSettings, account
from marketplace.ocean.state import Asset, OceanState

log = logging.getLogger(__name__)
T = TypeVar("T")
routes = web.RouteTableDef()


@dataclass
class Runtime:
    """Objects shared by the handlers: settings, publisher state, chain config, thread pool."""

    settings: OceanSettings
    state: OceanState
    pool: ThreadPoolExecutor
    _config: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        """ocean-lib config, (re)connected lazily so the service starts while the chain is down."""
        if self._config is None or not self._config["web3_instance"].is_connected():
            self._config = ocean_config(self.settings, connect(self.settings.rpc_url))
        return self._config

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


RUNTIME = web.AppKey("ocean_runtime", Runtime)


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def current_asset(rt: Runtime) -> Asset:
    asset = rt.state.asset(int(rt.config()["CHAIN_ID"]))
    if asset is None or not asset.metadata_set:
        raise OrderRejected(404, "not_published", "the dataset has not been published yet")
    return asset


async def guarded(rt: Runtime, fn: Callable[[], T]) -> T | web.Response:
    """Run chain-touching work off the loop; map chain outages and rejections to JSON errors."""
    try:
        return await rt.run(fn)
    except OrderRejected as exc:
        return error(exc.status, exc.code, exc.detail)
    except (ChainUnavailable, ConnectionError, OSError) as exc:
        log.warning("chain unavailable: %s", exc)
        return error(503, "chain_unavailable", "the chain node does not answer; retry later")


def dataset_bytes(rt: Runtime, asset: Asset) -> bytes:
    """The CSV, only if it is the version whose digest is on chain (else retry shortly)."""
    from ocean_lib.models.data_nft import DataNFT

    raw = DataNFT(rt.config(), asset.nft).get_data(DIGEST_KEY)
    on_chain = json.loads(raw) if raw else None
    try:
        data = rt.settings.csv_path.read_bytes()
    except FileNotFoundError:
        data = b""
    if not on_chain or on_chain.get("sha256") != digest(data):
        raise OrderRejected(503, "dataset_updating", "the dataset is being updated; retry shortly")
    return data


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return web.json_response(
        {
            "service": "crypto-doctor research data (Ocean download endpoint)",
            "provider": account(rt.settings.provider_key).address,
            "network": rt.settings.network_name,
        }
    )


@routes.get("/asset")
async def asset_info(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]

    def work() -> dict[str, Any]:
        from ocean_lib.models.data_nft import DataNFT

        asset = current_asset(rt)
        raw = DataNFT(rt.config(), asset.nft).get_data(DIGEST_KEY)
        return {
            "chain_id": asset.chain_id,
            "nft": asset.nft,
            "datatoken": asset.datatoken,
            "exchange": asset.exchange,
            "exchange_id": asset.exchange_id,
            "provider": account(rt.settings.provider_key).address,
            "digest": json.loads(raw) if raw else None,
            "ddo": ddo_for(rt.settings, asset),
        }

    result = await guarded(rt, work)
    return result if isinstance(result, web.Response) else web.json_response(result)


@routes.get("/initialize")
async def initialize(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    consumer = request.query.get("consumer", "")
    if not Web3.is_address(consumer):
        return error(400, "bad_consumer", "consumer must be an Ethereum address")

    def work() -> dict[str, Any]:
        config = rt.config()
        asset = current_asset(rt)
        now = chain_now(config["web3_instance"], time.time())
        data = {
            "dt": asset.datatoken,
            "id": "0",
            "consumer": Web3.to_checksum_address(consumer),
            "timestamp": now,
        }
        fee = provider_fee(
            rt.settings.provider_key,
            get_ocean_token_address(config),
            now + rt.settings.order_timeout_s,
            data,
        )
        return {"datatoken": asset.datatoken, "providerFee": fee}

    result = await guarded(rt, work)
    return result if isinstance(result, web.Response) else web.json_response(result)


@routes.post("/download")
async def download(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "bad_request", "body must be JSON")
    try:
        order_tx, signature = parse_download_request(body)
    except OrderRejected as exc:
        return error(exc.status, exc.code, exc.detail)
    if signature is None:
        return error(401, "unsigned", "sign the download message with the consumer's key")

    def verify() -> tuple[bytes, str]:
        config = rt.config()
        asset = current_asset(rt)
        facts = read_order(config, asset.datatoken, order_tx)
        consumer = check_order(
            facts,
            signer=recover_signer(order_tx, asset.datatoken, signature),
            provider=account(rt.settings.provider_key).address,
            now=chain_now(config["web3_instance"], time.time()),
            timeout_s=rt.settings.order_timeout_s,
        )
        data = dataset_bytes(rt, asset)
        if not rt.state.redeem_order(order_tx, asset.chain_id, consumer):
            raise OrderRejected(403, "order_reused", "this order was already used for a download")
        log.info("order %s redeemed by %s", order_tx, consumer)
        return data, order_tx

    result = await guarded(rt, verify)
    if isinstance(result, web.Response):
        return result
    data, order_tx = result
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="crypto-doctor-diagnoses.csv"',
            "X-Dataset-SHA256": digest(data),
        }
    )
    response.content_length = len(data)
    try:
        await response.prepare(request)
        for start in range(0, len(data), 64 * 1024):
            await response.write(data[start : start + 64 * 1024])
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        await rt.run(rt.state.release_order, order_tx)  # nothing arrived: the order stays usable
        raise
    return response


def create_download_app(settings: OceanSettings) -> web.Application:
    """App factory: the same startup path for tests, standalone runs and mounting."""
    app = web.Application()

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ocean-chain")
        state = OceanState(settings.state_path)
        app[RUNTIME] = Runtime(settings, state, pool)
        yield
        pool.shutdown(wait=True)
        state.close()

    app.cleanup_ctx.append(runtime_ctx)
    app.add_routes(routes)
    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m marketplace.ocean.serve`: run the download endpoint standalone."""
    from marketplace.ocean.settings import add_arguments, settings_from

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(create_download_app(settings_from(args)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
