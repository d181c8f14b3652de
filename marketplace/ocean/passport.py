"""Model passports on chain (adapter): one ERC721 data NFT per model lineage, one entry per version.

Why one NFT per lineage (not one per version): the owner and its write access are set once,
every version's entry and every change to it are ``DataChanged`` events of one contract (the
history is one ``eth_getLogs`` in chain order), and a new version costs one ``setNewData``
instead of a whole NFT. Entry ``n`` lives under the ERC725 key ``crypto-doctor/passport/v/<n>``
as compact JSON; only addresses on the NFT's 725 store list (its creator, the model owner) may
write, so anyone else's write reverts in the contract.

Large fields stay off chain in a *document*: content-addressed JSON files in a folder
(:class:`DocumentStore`), served by the project's download service and checked against the
hash on chain by every reader. The passport id is the NFT's address.

This module knows nothing of models: it stores and reads JSON; ``models.passport`` builds the
entries and checks checkpoints against them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from ocean_lib.models.data_nft import DataNFT, DataNFTArguments
from ocean_lib.models.data_nft_factory import DataNFTFactoryContract
from ocean_lib.ocean.util import get_address_of_type
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from marketplace.ocean.chain import GasRecord, chain_errors, connect, ocean_config, receipt_gas
from marketplace.ocean.settings import OceanSettings

log = logging.getLogger(__name__)
PASSPORT_SYMBOL = "CDPASS"
NAME_PREFIX = "crypto-doctor model passport: "
ENTRY_KEY = "crypto-doctor/passport/v/{version}"
#: Versions probed per lookup at most (a lineage with more would need an index key).
MAX_VERSIONS = 1000


class PassportError(RuntimeError):
    """A passport cannot be read, written or trusted; the message says why and what to do."""

    code = "passport_error"


class PassportNotFound(PassportError):
    code = "passport_not_found"


class WriteRefused(PassportError):
    """The chain reverted a write: the sender is not on the NFT's store list (not the owner)."""

    code = "passport_write_refused"


class DocumentMismatch(PassportError):
    """An off-chain document does not hash to what the chain says: tampered or corrupt."""

    code = "passport_document_mismatch"


def canonical(value: Any) -> bytes:
    """The one byte form every hash on a passport is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Lineage:
    """A lineage's passport NFT: its address (the passport id), name and creator."""

    passport_id: str
    name: str
    creator: str


@dataclass(frozen=True)
class Change:
    """One ``DataChanged`` event of a passport NFT, in chain order."""

    block: int
    log_index: int
    tx_hash: str
    version: int | None  # None: a key that is not a version entry
    value: dict[str, Any] | None  # None: not JSON


def entry_key(version: int) -> str:
    return ENTRY_KEY.format(version=version)


_KEY_VERSIONS: dict[bytes, int] = {}


def _version_of_key(key: bytes) -> int | None:
    if not _KEY_VERSIONS:
        for n in range(1, MAX_VERSIONS + 1):
            _KEY_VERSIONS[bytes(Web3.keccak(text=entry_key(n)))] = n
    return _KEY_VERSIONS.get(bytes(key))


class PassportChain:
    """ocean-lib calls for passports; every call may raise ChainUnavailable."""

    def __init__(
        self, rpc_url: str, address_file: Path, network: str = "development", timeout_s: float = 30
    ) -> None:
        settings = OceanSettings(rpc_url=rpc_url, address_file=address_file, network_name=network)
        with chain_errors():
            self.w3 = connect(rpc_url, timeout_s)
            self.config = ocean_config(settings, self.w3)
            self.chain_id = int(self.config["CHAIN_ID"])
        try:
            self.factory_address = get_address_of_type(self.config, "ERC721Factory")
        except Exception as exc:  # ocean-lib raises KeyError/ValueError/FileNotFoundError
            raise PassportError(
                f"no Ocean contracts known for chain {self.chain_id} in {address_file} ({exc}): "
                "run `python -m marketplace.ocean.deploy` (scripts/run does) and try again"
            ) from exc
        with chain_errors():
            if not self.w3.eth.get_code(Web3.to_checksum_address(self.factory_address)):
                raise PassportError(
                    f"{address_file} names no live ERC721Factory on chain {self.chain_id}: "
                    "run `python -m marketplace.ocean.deploy` and try again"
                )
        self.factory = DataNFTFactoryContract(self.config, self.factory_address)

    # -- lineages ------------------------------------------------------------------------

    def lineages(self, creator: str | None = None) -> list[Lineage]:
        """Every passport NFT the factory created (by ``creator``, when given), oldest first."""
        event = self.factory.contract.events.NFTCreated
        argument_filters = {"creator": Web3.to_checksum_address(creator)} if creator else None
        with chain_errors():
            logs = event.get_logs(fromBlock=0, argument_filters=argument_filters)
        found = []
        for entry in logs:
            args = entry["args"]
            if args["symbol"] != PASSPORT_SYMBOL or not args["tokenName"].startswith(NAME_PREFIX):
                continue
            found.append(
                Lineage(
                    Web3.to_checksum_address(args["newTokenAddress"]),
                    args["tokenName"][len(NAME_PREFIX) :],
                    Web3.to_checksum_address(args["creator"]),
                )
            )
        return found

    def lineage(self, passport_id: str) -> Lineage:
        """The passport NFT at ``passport_id``; PassportNotFound if it is none."""
        try:
            address = Web3.to_checksum_address(passport_id)
        except ValueError as exc:
            raise PassportNotFound(f"{passport_id!r} is not a passport id (an 0x address)") from exc
        for lineage in self.lineages():
            if lineage.passport_id == address:
                return lineage
        raise PassportNotFound(f"no model passport {address} on chain {self.chain_id}")

    def create_lineage(self, name: str, owner: LocalAccount) -> tuple[Lineage, GasRecord]:
        """Mint the lineage's data NFT (owner: ``owner``, the only one on its store list)."""
        args = DataNFTArguments(NAME_PREFIX + name, PASSPORT_SYMBOL)
        with chain_errors():
            receipt = self.factory.deployERC721Contract(
                args.name,
                args.symbol,
                args.template_index,
                args.additional_metadata_updater,
                args.additional_datatoken_deployer,
                args.uri,
                args.transferable,
                owner.address,
                {"from": owner},
            )
        _require_success(receipt, "creating the passport NFT")
        created = self.factory.contract.events.NFTCreated().process_receipt(receipt, errors=DISCARD)
        address = Web3.to_checksum_address(created[0]["args"]["newTokenAddress"])
        log.info("passport NFT %s created for lineage %s", address, name)
        return Lineage(address, name, owner.address), receipt_gas("mint passport NFT", receipt)

    # -- entries -------------------------------------------------------------------------

    def owner(self, passport_id: str) -> str:
        with chain_errors():
            return str(DataNFT(self.config, passport_id).ownerOf(1))

    def entry(self, passport_id: str, version: int) -> dict[str, Any] | None:
        """Version ``version``'s entry as on chain now, or None if there is none."""
        with chain_errors():
            raw = DataNFT(self.config, passport_id).getData(Web3.keccak(text=entry_key(version)))
        if not raw:
            return None
        try:
            value = json.loads(bytes(raw).decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise PassportError(f"entry {version} of {passport_id} is not JSON") from exc
        if not isinstance(value, dict):
            raise PassportError(f"entry {version} of {passport_id} is not a JSON object")
        return value

    def entries(self, passport_id: str) -> list[dict[str, Any]]:
        """Every version's current entry, version 1 first."""
        found = []
        for version in range(1, MAX_VERSIONS + 1):
            entry = self.entry(passport_id, version)
            if entry is None:
                break
            found.append(entry)
        return found

    def write_entry(
        self, passport_id: str, version: int, entry: dict[str, Any], sender: LocalAccount
    ) -> GasRecord:
        """Set version ``version``'s entry; WriteRefused when the contract reverts it."""
        try:
            with chain_errors():
                receipt = DataNFT(self.config, passport_id).setNewData(
                    Web3.keccak(text=entry_key(version)), canonical(entry), {"from": sender}
                )
        except ContractLogicError as exc:
            raise WriteRefused(
                f"the chain refused {sender.address}'s write to passport {passport_id}: {exc} "
                "(only the passport's owner may write)"
            ) from exc
        _require_success(receipt, "writing a passport entry")
        return receipt_gas(f"write passport entry v{version}", receipt)

    def history(self, passport_id: str) -> list[Change]:
        """Every ``DataChanged`` event of the NFT, in chain order."""
        nft = DataNFT(self.config, passport_id)
        with chain_errors():
            logs = nft.contract.events.DataChanged.get_logs(fromBlock=0)
        changes = []
        for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
            raw = bytes(entry["args"]["value"])
            try:
                value = json.loads(raw.decode())
            except (UnicodeDecodeError, ValueError):
                value = None
            changes.append(
                Change(
                    block=int(entry["blockNumber"]),
                    log_index=int(entry["logIndex"]),
                    tx_hash=Web3.to_hex(entry["transactionHash"]),
                    version=_version_of_key(entry["args"]["key"]),
                    value=value if isinstance(value, dict) else None,
                )
            )
        return changes

    def block_time(self, block: int) -> int:
        with chain_errors():
            return int(self.w3.eth.get_block(block)["timestamp"])


def _require_success(receipt: Any, what: str) -> None:
    if receipt["status"] != 1:
        raise PassportError(f"{what}: transaction {Web3.to_hex(receipt['transactionHash'])} failed")


class DocumentStore:
    """Passport documents as ``<sha256>.json`` files: written once, checked on every read."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise PassportNotFound(f"{sha256!r} is not a document hash (64 lowercase hex digits)")
        return self.folder / f"{sha256}.json"

    def put(self, document: bytes) -> str:
        sha = sha256_hex(document)
        path = self.path(sha)
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(document)
            os.replace(tmp, path)
        return sha

    def get(self, sha256: str) -> bytes:
        """The document's bytes; DocumentMismatch if the file no longer hashes to its name."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise PassportNotFound(f"passport document {sha256} is not in {self.folder}") from exc
        if sha256_hex(data) != sha256:
            raise DocumentMismatch(
                f"passport document {path} does not match the hash on chain "
                f"(it hashes to {sha256_hex(data)}): it was changed after minting"
            )
        return data
