"""Connect to the chain and build the config dict ocean-lib reads (adapter, no domain logic)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.types import TxParams, TxReceipt

from marketplace.ocean.settings import OceanSettings, account

log = logging.getLogger(__name__)


class ChainUnavailable(RuntimeError):
    """The JSON-RPC node did not answer: callers queue work and retry later."""

    code = "chain_unavailable"


@contextlib.contextmanager
def chain_errors() -> Iterator[None]:
    """Turn "the node is not there" errors into ChainUnavailable (so work is queued, not lost)."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError) as exc:
        raise ChainUnavailable(str(exc)) from exc


def connect(rpc_url: str, timeout_s: float = 30.0) -> Web3:
    """A web3 connection that fails fast with ChainUnavailable when the node is down."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
    # ocean-lib passes bytes values that are shorter than their ABI type (as its own get_web3 does).
    w3.strict_bytes_type_checking = False
    if not w3.is_connected():
        raise ChainUnavailable(f"no JSON-RPC answer from {rpc_url}")
    return w3


def ocean_config(settings: OceanSettings, w3: Web3 | None = None) -> dict[str, Any]:
    """The config dict `ocean_lib` wants, pointed at this project's chain and services.

    Aquarius and Provider do not exist offline; both URLs point at the project's download
    service, which answers the Aquarius liveness probe so that `Ocean(config)` constructs.
    """
    w3 = w3 or connect(settings.rpc_url)
    return {
        "web3_instance": w3,
        "CHAIN_ID": w3.eth.chain_id,
        "NETWORK_NAME": settings.network_name,
        "ADDRESS_FILE": str(Path(settings.address_file).expanduser().resolve()),
        # trailing slash: when mounted under a prefix (/ocean) the probe must hit the app's "/"
        "METADATA_CACHE_URI": settings.service_url.rstrip("/") + "/",
        "PROVIDER_URL": settings.service_url,
        "DOWNLOADS_PATH": str(Path(settings.data_dir) / "downloads"),
    }


@dataclass(frozen=True)
class GasRecord:
    """Gas used by one named step, for the figures in the closing note."""

    step: str
    gas_used: int
    tx_hash: str


def receipt_gas(step: str, receipt: TxReceipt) -> GasRecord:
    return GasRecord(step, int(receipt["gasUsed"]), HexBytes(receipt["transactionHash"]).hex())


def send_raw(w3: Web3, wallet: LocalAccount, tx: dict[str, Any]) -> TxReceipt:
    """Sign and send a built transaction with web3-filled EIP-1559 fees; raise if it reverted."""
    tx = dict(tx)
    tx.setdefault("from", wallet.address)
    tx["nonce"] = w3.eth.get_transaction_count(wallet.address)
    tx.setdefault("chainId", w3.eth.chain_id)
    if "gas" not in tx:
        tx["gas"] = w3.eth.estimate_gas(cast(TxParams, tx))
    signed = wallet.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.rawTransaction)
    )
    if receipt["status"] != 1:
        raise RuntimeError(f"transaction {receipt['transactionHash'].hex()} reverted")
    return receipt


def wallet(private_key: str) -> LocalAccount:
    return account(private_key)
