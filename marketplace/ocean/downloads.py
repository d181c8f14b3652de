"""The download service's use cases: describe the asset, sign a provider fee, redeem an order.

They stand in for Ocean's Provider offline. Each call is blocking (chain JSON-RPC, the
publisher's SQLite state, the CSV file): the web layer runs them in its chain thread pool.
Refusals are exceptions with a stable `code` (`orders.OrderRefused`, `NotPublished`,
`DatasetUpdating`, `chain.ChainUnavailable`); the web layer maps them to HTTP statuses.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ocean_lib.ocean.util import get_ocean_token_address

from marketplace.ocean.asset import Digest, ddo_for, read_digest
from marketplace.ocean.chain import ChainUnavailable, chain_errors, connect, ocean_config
from marketplace.ocean.dataset import digest
from marketplace.ocean.orders import (
    OrderNotGranted,
    chain_now,
    check_order,
    provider_fee,
    read_order,
    recover_signer,
)
from marketplace.ocean.settings import OceanSettings, account
from marketplace.ocean.state import Asset, OceanState

log = logging.getLogger(__name__)


class NotPublished(Exception):
    """No data NFT with metadata exists on this chain yet: nothing to describe or sell."""

    code = "not_published"


class DatasetUpdating(Exception):
    """The CSV on disk is not the version whose digest is on chain (a publish is under way)."""

    code = "dataset_updating"


@dataclass(frozen=True)
class AssetInfo:
    """What a buyer needs before buying: addresses, the on-chain digest and the DDO."""

    chain_id: int
    nft: str
    datatoken: str
    exchange: str
    exchange_id: str
    provider: str
    digest: Digest | None
    ddo: dict[str, Any]


@dataclass(frozen=True)
class OrderStart:
    """A provider fee signed for one consumer: the argument of its `startOrder` transaction."""

    datatoken: str
    provider_fee: dict[str, Any]


@dataclass(frozen=True)
class Download:
    """A redeemed order and the exact CSV bytes whose digest is on chain."""

    order_tx: str
    consumer: str
    data: bytes
    sha256: str


@contextlib.contextmanager
def _chain() -> Iterator[None]:
    """Chain outages become one ChainUnavailable whose message names no URL (RPC URLs may carry
    API keys); the real error goes to the log."""
    try:
        with chain_errors():
            yield
    except ChainUnavailable as exc:
        log.warning("chain unavailable: %s", exc)
        raise ChainUnavailable("the chain node does not answer; retry later") from exc


@dataclass
class Downloads:
    """The use cases over one publisher's state; the chain connection is made lazily, so the
    service starts (and answers 503) while the chain is down."""

    settings: OceanSettings
    state: OceanState
    _config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def provider(self) -> str:
        """The address that signs provider fees (orders must name it)."""
        return str(account(self.settings.provider_key).address)

    def config(self) -> dict[str, Any]:
        """ocean-lib config, reconnected when the node went away."""
        if self._config is None or not self._config["web3_instance"].is_connected():
            self._config = ocean_config(self.settings, connect(self.settings.rpc_url))
        return self._config

    def published_asset(self) -> Asset:
        asset = self.state.asset(int(self.config()["CHAIN_ID"]))
        if asset is None or not asset.metadata_set:
            raise NotPublished("the dataset has not been published yet")
        return asset

    def describe(self) -> AssetInfo:
        with _chain():
            asset = self.published_asset()
            on_chain = read_digest(self.config(), asset.nft)
        return AssetInfo(
            chain_id=asset.chain_id,
            nft=asset.nft,
            datatoken=asset.datatoken,
            exchange=asset.exchange,
            exchange_id=asset.exchange_id,
            provider=self.provider,
            digest=on_chain,
            ddo=ddo_for(self.settings, asset),
        )

    def start_order(self, consumer: str) -> OrderStart:
        """A zero-amount provider fee for `consumer`, valid for the order timeout."""
        with _chain():
            config = self.config()
            asset = self.published_asset()
            now = chain_now(config["web3_instance"], time.time())
            fee_token = get_ocean_token_address(config)
        data = {"dt": asset.datatoken, "id": "0", "consumer": consumer, "timestamp": now}
        fee = provider_fee(
            self.settings.provider_key, fee_token, now + self.settings.order_timeout_s, data
        )
        return OrderStart(datatoken=asset.datatoken, provider_fee=fee)

    def redeem(self, order_tx: str, signature: str) -> Download:
        """Check the order on chain, then spend it (once) for the CSV whose digest is on chain."""
        with _chain():
            config = self.config()
            asset = self.published_asset()
            consumer = check_order(
                read_order(config, asset.datatoken, order_tx),
                signer=recover_signer(order_tx, asset.datatoken, signature),
                provider=self.provider,
                now=chain_now(config["web3_instance"], time.time()),
                timeout_s=self.settings.order_timeout_s,
            )
            data = self._published_bytes(asset)
        if not self.state.redeem_order(order_tx, asset.chain_id, consumer):
            raise OrderNotGranted("order_reused", "this order was already used for a download")
        log.info("order %s redeemed by %s", order_tx, consumer)
        return Download(order_tx=order_tx, consumer=consumer, data=data, sha256=digest(data))

    def release(self, order_tx: str) -> None:
        """Make an order usable again: its file never reached the consumer."""
        self.state.release_order(order_tx)

    def _published_bytes(self, asset: Asset) -> bytes:
        try:
            data = self.settings.csv_path.read_bytes()
        except FileNotFoundError:
            data = b""
        on_chain = read_digest(self.config(), asset.nft)
        if on_chain is None or on_chain.sha256 != digest(data):
            raise DatasetUpdating("the dataset is being updated; retry shortly")
        return data
