"""The published asset on chain, through ocean-lib: data NFT + datatoken + fixed-rate exchange.

Created once per chain in one transaction (`create_with_erc20_and_fixed_rate`), then the DDO
(plain, Ocean V4 format) is set as the NFT's metadata. Each publish stores only the CSV's sha256
and row count on the NFT (ERC725 `set_data`): on-chain bytes cost ~720 gas each, rows stay off chain.
Everyone reads that digest through :func:`read_digest` (the publisher, the download service and
the researcher CLI), so its key and format live only here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from ocean_lib.models.data_nft import DataNFT, DataNFTArguments, Flags
from ocean_lib.models.data_nft_factory import DataNFTFactoryContract
from ocean_lib.models.datatoken_base import DatatokenArguments
from ocean_lib.models.fixed_rate_exchange import ExchangeArguments
from ocean_lib.ocean.util import get_address_of_type, get_ocean_token_address
from web3 import Web3

from marketplace.ocean.chain import GasRecord, chain_errors, connect, ocean_config, receipt_gas
from marketplace.ocean.dataset import COLUMNS
from marketplace.ocean.settings import OceanSettings, account
from marketplace.ocean.state import Asset

log = logging.getLogger(__name__)
DATASET_NAME = "crypto-doctor anonymized diagnoses"
NFT_SYMBOL = "CDDIAG"
DATATOKEN_NAME = "crypto-doctor diagnoses access"
DATATOKEN_SYMBOL = "CDDT"
DIGEST_KEY = "crypto-doctor/csv"


@dataclass(frozen=True)
class Digest:
    """What the data NFT says the published CSV is: its sha256 and its number of rows."""

    sha256: str
    rows: int


def read_digest(config: dict[str, Any], nft: str) -> Digest | None:
    """The digest on the data NFT at `nft`, or None before the first publish."""
    with chain_errors():
        raw = DataNFT(config, nft).get_data(DIGEST_KEY)
    if not raw:
        return None
    record = json.loads(raw)
    return Digest(sha256=str(record["sha256"]), rows=int(record["rows"]))


def dataset_metadata(settings: OceanSettings) -> dict[str, Any]:
    """Ocean V4 `metadata` block of the DDO."""
    return {
        "type": "dataset",
        "name": DATASET_NAME,
        "description": (
            "One row per brain-MRI second-opinion case settled by a blind panel of doctors. "
            f"Columns: {', '.join(COLUMNS)}. No images, no patient data, no doctor identities; "
            f"released only in groups of >= {settings.k} rows sharing "
            f"{', '.join(settings.quasi_identifiers)}."
        ),
        "author": "crypto-doctor",
        "license": "CC-BY-4.0",
        "tags": ["medical", "mri", "brain", "anonymized", "k-anonymity"],
        "additionalInformation": {
            "columns": list(COLUMNS),
            "k": settings.k,
            "quasiIdentifiers": list(settings.quasi_identifiers),
            "digestKey": DIGEST_KEY,
        },
    }


class AssetChain:
    """ocean-lib calls for the publisher's asset; every call may raise ChainUnavailable."""

    def __init__(self, settings: OceanSettings) -> None:
        self.settings = settings
        self.publisher = account(settings.publisher_key)
        with chain_errors():
            self.w3 = connect(settings.rpc_url)
            self.config = ocean_config(settings, self.w3)
            self.chain_id = int(self.config["CHAIN_ID"])

    def tx(self) -> dict[str, Any]:
        return {"from": self.publisher}

    def exists(self, asset: Asset) -> bool:
        """False when the chain no longer knows the NFT (e.g. a fresh development chain)."""
        with chain_errors():
            return len(self.w3.eth.get_code(Web3.to_checksum_address(asset.nft))) > 0

    def create(self) -> tuple[Asset, GasRecord]:
        """NFT + datatoken + exchange priced in OCEAN, in one transaction."""
        with chain_errors():
            factory = DataNFTFactoryContract(
                self.config, get_address_of_type(self.config, "ERC721Factory")
            )
            ocean_addr = get_ocean_token_address(self.config)
            before = self.w3.eth.block_number
            nft, datatoken, exchange = factory.create_with_erc20_and_fixed_rate(
                DataNFTArguments(DATASET_NAME, NFT_SYMBOL),
                DatatokenArguments(DATATOKEN_NAME, DATATOKEN_SYMBOL),
                ExchangeArguments(
                    rate=self.settings.price_wei, base_token_addr=ocean_addr, dt_decimals=18
                ),
                self.tx(),
            )
            receipt = self._last_receipt_of(self.publisher.address, before)
        asset = Asset(
            chain_id=self.chain_id,
            nft=nft.address,
            datatoken=datatoken.address,
            exchange=exchange.address,
            exchange_id="0x" + bytes(exchange.exchange_id).hex(),
            metadata_set=False,
        )
        log.info("created data NFT %s, datatoken %s", asset.nft, asset.datatoken)
        return asset, receipt_gas("create NFT+datatoken+exchange", receipt)

    def _last_receipt_of(self, sender: str, after_block: int) -> Any:
        """ocean-lib's factory helper returns objects, not the receipt: find it for the figures."""
        for number in range(self.w3.eth.block_number, after_block, -1):
            block = self.w3.eth.get_block(number, full_transactions=True)
            transactions: list[Any] = list(block["transactions"])
            for tx in reversed(transactions):
                if tx["from"] == sender:
                    return self.w3.eth.get_transaction_receipt(tx["hash"])
        raise RuntimeError("publish transaction not found")

    def set_metadata(self, asset: Asset) -> GasRecord:
        """Set the plain (unencrypted, uncompressed) V4 DDO on the data NFT."""
        with chain_errors():
            nft = DataNFT(self.config, asset.nft)
            ddo = ddo_for(self.settings, asset)
            document = json.dumps(ddo, separators=(",", ":")).encode()
            receipt = nft.setMetaData(
                0,
                self.settings.service_url,
                self.publisher.address.encode(),
                Flags.PLAIN.to_byte(),
                document,
                hashlib.sha256(document).hexdigest(),
                [],
                self.tx(),
            )
        return receipt_gas("set metadata (DDO)", receipt)

    def digest(self, asset: Asset) -> Digest | None:
        """The digest currently on the asset's NFT, or None before the first publish."""
        return read_digest(self.config, asset.nft)

    def set_digest(self, asset: Asset, digest: Digest) -> GasRecord:
        value = json.dumps({"sha256": digest.sha256, "rows": digest.rows}, separators=(",", ":"))
        with chain_errors():
            receipt = DataNFT(self.config, asset.nft).set_data(DIGEST_KEY, value, self.tx())
        return receipt_gas("set CSV digest", receipt)


def ddo_for(settings: OceanSettings, asset: Asset) -> dict[str, Any]:
    """A V4 DDO for the asset; its access service points at the project's download endpoint."""
    did = (
        "did:op:"
        + hashlib.sha256(
            (Web3.to_checksum_address(asset.nft) + str(asset.chain_id)).encode()
        ).hexdigest()
    )
    return {
        "@context": ["https://w3id.org/did/v1"],
        "id": did,
        "version": "4.1.0",
        "chainId": asset.chain_id,
        "nftAddress": asset.nft,
        "metadata": dataset_metadata(settings),
        "services": [
            {
                "id": "0",
                "type": "access",
                "files": "",
                "datatokenAddress": asset.datatoken,
                "serviceEndpoint": settings.service_url,
                "timeout": settings.order_timeout_s,
            }
        ],
    }
