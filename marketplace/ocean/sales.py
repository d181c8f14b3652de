"""The data set's sales, read from the chain: ``Swapped`` events of the publisher's exchange.

Why ``Swapped`` and not ``OrderStarted``: in Ocean V4's ABI (``artifacts/ERC20Template.json``)
``OrderStarted(consumer, payer, amount, serviceIndex, timestamp, publishMarketAddress,
blockNumber)`` logs the *datatoken* amount spent on the order, not what was paid for it. The
OCEAN changes hands in the fixed-rate exchange (``artifacts/FixedRateExchange.json``):
``Swapped(exchangeId, by, baseTokenSwappedAmount, datatokenSwappedAmount, tokenOutAddress,
marketFeeAmount, oceanFeeAmount, consumeMarketFeeAmount)``. A purchase is a swap whose
``tokenOutAddress`` is the datatoken; ``baseTokenSwappedAmount`` is what the buyer paid, fees
included, so the publisher's proceeds are that minus the three fees. (A swap the other way,
datatokens sold back for OCEAN, is not a sale and is not read.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hexbytes import HexBytes
from ocean_lib.web3_internal.contract_utils import load_contract
from web3 import Web3

from marketplace.domain.royalties import Sale
from marketplace.ocean.chain import chain_errors
from marketplace.ocean.state import Asset

#: Blocks per ``eth_getLogs`` request.
SCAN_STEP = 5_000


def _hex(value: Any) -> str:
    text = HexBytes(value).hex()
    return text if text.startswith("0x") else "0x" + text


def genesis_hash(w3: Web3) -> str:
    """Identifies the chain's history: a fresh chain has a new one, a restarted node the same."""
    with chain_errors():
        return _hex(w3.eth.get_block(0)["hash"])


def read_sales(w3: Web3, asset: Asset, from_block: int) -> tuple[list[Sale], int]:
    """Purchases on ``asset``'s exchange from ``from_block`` to the latest block, and the
    block to start from next time."""
    with chain_errors():
        exchange = load_contract(w3, "FixedRateExchange", Web3.to_checksum_address(asset.exchange))
        latest = int(w3.eth.block_number)
        chain_id = int(w3.eth.chain_id)
        sales: list[Sale] = []
        times: dict[int, datetime] = {}
        start = max(0, from_block)
        while start <= latest:
            end = min(latest, start + SCAN_STEP - 1)
            events = exchange.events.Swapped().get_logs(
                argument_filters={"exchangeId": HexBytes(asset.exchange_id)},
                fromBlock=start,
                toBlock=end,
            )
            for event in events:
                args = event["args"]
                if str(args["tokenOutAddress"]).lower() != asset.datatoken.lower():
                    continue  # datatokens sold back: not a sale
                number = int(event["blockNumber"])
                if number not in times:
                    stamp = int(w3.eth.get_block(number)["timestamp"])
                    times[number] = datetime.fromtimestamp(stamp, UTC)
                paid = int(args["baseTokenSwappedAmount"])
                fees = (
                    int(args["marketFeeAmount"])
                    + int(args["oceanFeeAmount"])
                    + int(args["consumeMarketFeeAmount"])
                )
                sales.append(
                    Sale(
                        chain_id=chain_id,
                        block_hash=_hex(event["blockHash"]),
                        log_index=int(event["logIndex"]),
                        block_number=number,
                        tx_hash=_hex(event["transactionHash"]),
                        sold_at=times[number],
                        ocean_wei=paid - fees,
                    )
                )
            start = end + 1
    return sales, latest + 1
