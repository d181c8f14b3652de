"""Orders: the provider fee the service signs, the consumer's download signature, and the rule
that decides whether an on-chain order grants a download.

The rule (`check_order`) is pure: it judges facts read from the chain (`OrderFacts`), so every
refusal path is unit-tested without a node. `read_order` is the chain adapter that gathers them.
Refusals are domain exceptions with a stable `code`; the download service maps their classes to
HTTP statuses in its one table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, cast

from eth_account import Account
from eth_account.messages import encode_defunct
from hexbytes import HexBytes
from ocean_lib.models.datatoken_base import DatatokenBase
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.logs import DISCARD
from web3.types import HexStr

from marketplace.ocean.settings import ONE_TOKEN

TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


class OrderRefused(Exception):
    """A request that must not get data; `code` says why, in words clients can match on."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class MalformedRequest(OrderRefused):
    """The request itself is not well formed (body, hash, address, signature encoding)."""


class UnprovenConsumer(OrderRefused):
    """The request does not prove who asks: no signature, or one that recovers to nobody."""


class OrderNotGranted(OrderRefused):
    """The order exists in the request but grants no download (wrong, foreign, expired, used)."""


def download_message(order_tx: str, datatoken: str) -> str:
    """What the consumer signs (EIP-191 personal message) to prove it holds the order's key."""
    return (
        "crypto-doctor research download\n"
        f"order: {order_tx.lower()}\n"
        f"datatoken: {Web3.to_checksum_address(datatoken)}"
    )


def sign_download(private_key: str, order_tx: str, datatoken: str) -> str:
    signed = Account.sign_message(
        encode_defunct(text=download_message(order_tx, datatoken)), private_key
    )
    return HexBytes(signed.signature).hex()


def recover_signer(order_tx: str, datatoken: str, signature: str) -> str | None:
    """Address that produced the signature, or None if it is not a valid signature at all."""
    try:
        return Account.recover_message(
            encode_defunct(text=download_message(order_tx, datatoken)), signature=signature
        )
    except Exception:  # noqa: BLE001 - any decoding failure means "no valid signer"
        return None


def provider_fee(
    provider_key: str, fee_token: str, valid_until: int, provider_data: dict[str, Any]
) -> dict[str, Any]:
    """A zero-amount provider fee signed like Ocean's Provider does (`startOrder` checks it)."""
    provider = Account.from_key(provider_key)
    data = json.dumps(provider_data, separators=(",", ":"))
    data_hex = Web3.to_hex(text=data)
    message_hash = Web3.solidity_keccak(
        ["bytes", "address", "address", "uint256", "uint256"],
        [data_hex, provider.address, Web3.to_checksum_address(fee_token), 0, valid_until],
    )
    signed = Account.sign_message(encode_defunct(primitive=message_hash), provider_key)
    return {
        "providerFeeAddress": provider.address,
        "providerFeeToken": Web3.to_checksum_address(fee_token),
        "providerFeeAmount": 0,
        "providerData": data_hex,
        "v": signed.v,
        "r": Web3.to_hex(Web3.to_bytes(signed.r).rjust(32, b"\0")),
        "s": Web3.to_hex(Web3.to_bytes(signed.s).rjust(32, b"\0")),
        "validUntil": valid_until,
    }


@dataclass(frozen=True)
class OrderFacts:
    """What the chain says about an order transaction (only logs of our datatoken count)."""

    found: bool
    succeeded: bool = False
    consumer: str | None = None  # OrderStarted.consumer
    amount: int = 0  # OrderStarted.amount (datatoken wei)
    provider: str | None = None  # ProviderFee.providerFeeAddress
    valid_until: int = 0  # ProviderFee.validUntil
    block_timestamp: int = 0


def check_order(
    facts: OrderFacts,
    *,
    signer: str | None,
    provider: str,
    now: int,
    timeout_s: int,
) -> str:
    """Return the consumer address if the order grants a download, else raise OrderRefused."""
    if not facts.found or not facts.succeeded:
        raise OrderNotGranted("order_not_found", "no successful transaction with that hash")
    if facts.consumer is None:
        raise OrderNotGranted("wrong_datatoken", "transaction holds no order of this dataset")
    if signer is None:
        raise UnprovenConsumer("bad_signature", "signature does not recover to an address")
    if signer.lower() != facts.consumer.lower():
        raise OrderNotGranted("not_your_order", "order belongs to another account")
    if facts.amount < ONE_TOKEN:
        raise OrderNotGranted("amount_too_low", "order paid less than one datatoken")
    if facts.provider is None or facts.provider.lower() != provider.lower():
        raise OrderNotGranted("foreign_provider", "order was not initialized by this service")
    if (facts.valid_until and facts.valid_until < now) or facts.block_timestamp + timeout_s < now:
        raise OrderNotGranted("order_expired", "order is older than the service timeout")
    return facts.consumer


def read_order(config: dict[str, Any], datatoken_address: str, order_tx: str) -> OrderFacts:
    """Gather OrderStarted/ProviderFee logs emitted by our datatoken in that transaction."""
    w3: Web3 = config["web3_instance"]
    try:
        receipt = w3.eth.get_transaction_receipt(cast(HexStr, order_tx))
    except TransactionNotFound:
        return OrderFacts(found=False)
    if receipt["status"] != 1:
        return OrderFacts(found=True, succeeded=False)
    dt = DatatokenBase.get_typed(config, datatoken_address)
    ours = [log for log in receipt["logs"] if log["address"].lower() == datatoken_address.lower()]
    ours_receipt = dict(receipt, logs=ours)
    started = dt.contract.events.OrderStarted().process_receipt(ours_receipt, errors=DISCARD)
    fees = dt.contract.events.ProviderFee().process_receipt(ours_receipt, errors=DISCARD)
    block = w3.eth.get_block(receipt["blockNumber"])
    if not started:
        return OrderFacts(found=True, succeeded=True, block_timestamp=int(block["timestamp"]))
    return OrderFacts(
        found=True,
        succeeded=True,
        consumer=started[0].args.consumer,
        amount=int(started[0].args.amount),
        provider=fees[0].args.providerFeeAddress if fees else None,
        valid_until=int(fees[0].args.validUntil) if fees else 0,
        block_timestamp=int(block["timestamp"]),
    )


def chain_now(w3: Web3, wall_clock: float) -> int:
    """Current time for expiry: the later of wall clock and the latest block's timestamp."""
    return max(int(wall_clock), int(w3.eth.get_block("latest")["timestamp"]))


def parse_download_request(body: Any) -> tuple[str, str]:
    """Validate the JSON body: {"order_tx": "0x…64 hex", "signature": "0x…130 hex"}."""
    if not isinstance(body, dict):
        raise MalformedRequest("bad_request", "body must be a JSON object")
    order_tx = body.get("order_tx")
    if not isinstance(order_tx, str) or not TX_HASH.match(order_tx):
        raise MalformedRequest("bad_order_tx", "order_tx must be a 0x-prefixed 32-byte hash")
    signature = body.get("signature")
    if signature in (None, ""):
        raise UnprovenConsumer("unsigned", "sign the download message with the consumer's key")
    if not isinstance(signature, str) or not SIGNATURE.match(signature):
        raise MalformedRequest("bad_signature_format", "signature must be 65 bytes of 0x-hex")
    return order_tx.lower(), signature


def parse_consumer(text: str) -> str:
    """The checksummed address a provider fee is signed for (the `consumer` query parameter)."""
    if not Web3.is_address(text):
        raise MalformedRequest("bad_consumer", "consumer must be an Ethereum address")
    return str(Web3.to_checksum_address(text))
