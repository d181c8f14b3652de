"""Deploy Ocean's V4 contracts from the `ocean-contracts` artifacts, idempotently.

Order and constructor arguments follow Ocean's own deploy script (ocean-contracts v2.0.3,
development network): OCEAN mock, OPF fee collector, router, fixed-rate exchange, templates,
dispenser, NFT factory, extra datatoken templates, then router registrations. The address file
is written in the format ocean-lib reads (`json[network]["ERC721Factory"]` ...).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from ocean_lib.web3_internal.contract_utils import load_contract
from web3 import Web3

from marketplace.ocean.chain import GasRecord, receipt_gas, send_raw
from marketplace.ocean.settings import ONE_TOKEN

log = logging.getLogger(__name__)
DEAD = "0x000000000000000000000000000000000000dEaD"  # Ocean's placeholder pool template
INITIAL_OCEAN_SUPPLY = 1_000_000 * ONE_TOKEN


@dataclass
class DeployReport:
    """What a deploy run did: addresses, whether it deployed, gas per transaction, seconds."""

    addresses: dict[str, Any]
    deployed: bool
    gas: list[GasRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_gas(self) -> int:
        return sum(g.gas_used for g in self.gas)


def _deploy(w3: Web3, owner: LocalAccount, name: str, args: list[Any], gas: list[GasRecord]) -> str:
    contract = load_contract(w3, name, None)  # ocean-lib's own artifact loader
    tx = contract.constructor(*args).build_transaction({"from": owner.address})
    receipt = send_raw(w3, owner, tx)
    gas.append(receipt_gas(f"deploy {name}", receipt))
    return Web3.to_checksum_address(receipt["contractAddress"])


def _call(w3: Web3, owner: LocalAccount, name: str, addr: str, fn: str, *args: Any) -> GasRecord:
    contract = load_contract(w3, name, addr)
    tx = getattr(contract.functions, fn)(*args).build_transaction({"from": owner.address})
    return receipt_gas(f"{name}.{fn}", send_raw(w3, owner, tx))


def read_addresses(address_file: Path, network: str) -> dict[str, Any] | None:
    """The network's entry of an address file, or None if absent."""
    if not Path(address_file).exists():
        return None
    return json.loads(Path(address_file).read_text()).get(network)


def is_deployed(w3: Web3, entry: dict[str, Any] | None) -> bool:
    """True when every address of the entry has code on this chain (same chain id)."""
    if not entry or entry.get("chainId") != w3.eth.chain_id:
        return False
    addrs: list[str] = []
    for value in entry.values():
        if isinstance(value, dict):
            addrs.extend(value.values())
        elif isinstance(value, str):
            addrs.append(value)
    return all(len(w3.eth.get_code(Web3.to_checksum_address(a))) > 0 for a in addrs)


def write_addresses(address_file: Path, network: str, entry: dict[str, Any]) -> None:
    """Merge the network entry into the file atomically (other networks are kept)."""
    address_file = Path(address_file)
    address_file.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(address_file.read_text()) if address_file.exists() else {}
    data[network] = entry
    tmp = address_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, address_file)


def deploy_contracts(
    w3: Web3, owner: LocalAccount, address_file: Path, network: str = "development"
) -> DeployReport:
    """Deploy everything unless the address file already points at live contracts."""
    started = time.perf_counter()
    existing = read_addresses(address_file, network)
    if is_deployed(w3, existing):
        log.info("Ocean contracts already deployed on chain %s", w3.eth.chain_id)
        return DeployReport(existing or {}, deployed=False, seconds=time.perf_counter() - started)

    gas: list[GasRecord] = []
    me = owner.address
    ocean = _deploy(w3, owner, "OceanToken", [me], gas)
    gas.append(_call(w3, owner, "OceanToken", ocean, "mint", me, INITIAL_OCEAN_SUPPLY))
    opf = _deploy(w3, owner, "OPFCommunityFeeCollector", [me, me], gas)
    router = _deploy(w3, owner, "FactoryRouter", [me, ocean, DEAD, opf, []], gas)
    fre = _deploy(w3, owner, "FixedRateExchange", [router], gas)
    erc20 = _deploy(w3, owner, "ERC20Template", [], gas)
    erc20_enterprise = _deploy(w3, owner, "ERC20TemplateEnterprise", [], gas)
    erc20_t3 = _deploy(w3, owner, "ERC20Template3", [], gas)
    erc721 = _deploy(w3, owner, "ERC721Template", [], gas)
    dispenser = _deploy(w3, owner, "Dispenser", [router], gas)
    factory = _deploy(w3, owner, "ERC721Factory", [erc721, erc20, router], gas)
    gas.append(_call(w3, owner, "ERC721Factory", factory, "addTokenTemplate", erc20_enterprise))
    gas.append(_call(w3, owner, "ERC721Factory", factory, "addTokenTemplate", erc20_t3))
    gas.append(_call(w3, owner, "FactoryRouter", router, "addFactory", factory))
    gas.append(_call(w3, owner, "FactoryRouter", router, "addFixedRateContract", fre))
    gas.append(_call(w3, owner, "FactoryRouter", router, "addDispenserContract", dispenser))

    entry: dict[str, Any] = {
        "chainId": w3.eth.chain_id,
        "Ocean": ocean,
        "OPFCommunityFeeCollector": opf,
        "Router": router,
        "FixedPrice": fre,
        "Dispenser": dispenser,
        "ERC721Factory": factory,
        "ERC721Template": {"1": erc721},
        "ERC20Template": {"1": erc20, "2": erc20_enterprise, "3": erc20_t3},
    }
    write_addresses(address_file, network, entry)
    report = DeployReport(entry, deployed=True, gas=gas, seconds=time.perf_counter() - started)
    log.info("deployed Ocean contracts: %d txs, %d gas", len(gas), report.total_gas)
    return report


def fund_ocean(w3: Web3, owner: LocalAccount, ocean: str, to: str, amount_wei: int) -> GasRecord:
    """Dev chains only: send mock OCEAN from the deployer to an account (e.g. the researcher)."""
    return _call(
        w3, owner, "OceanToken", ocean, "transfer", Web3.to_checksum_address(to), amount_wei
    )
