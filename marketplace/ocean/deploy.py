"""Deploy Ocean's V4 contracts from the `ocean-contracts` artifacts, idempotently.

    python -m marketplace.ocean.deploy [--rpc-url URL] [--address-file var/ocean/address.json]

Order and constructor arguments follow Ocean's own deploy script (ocean-contracts v2.0.3,
development network): OCEAN mock, OPF fee collector, router, fixed-rate exchange, templates,
dispenser, NFT factory, extra datatoken templates, then router registrations. The address file
is written in the format ocean-lib reads (`json[network]["ERC721Factory"]` ...). The command
prints a JSON summary (addresses, whether anything was deployed, gas per transaction, seconds)
and, on the development network only (where OCEAN is our own mock), funds the researcher.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from ocean_lib.models.datatoken_base import DatatokenBase
from ocean_lib.web3_internal.contract_utils import load_contract
from web3 import Web3

from infra.settings import flag, nested, parse_settings
from marketplace.ocean.chain import GasRecord, connect, ocean_config, receipt_gas, send_raw, wallet
from marketplace.ocean.settings import ONE_TOKEN, OceanSettings

log = logging.getLogger(__name__)
DEAD = "0x000000000000000000000000000000000000dEaD"  # Ocean's placeholder pool template
INITIAL_OCEAN_SUPPLY = 1_000_000 * ONE_TOKEN


@dataclass(frozen=True)
class DeployReport:
    """What a deploy run did: addresses, whether it deployed, gas per transaction, seconds."""

    addresses: dict[str, Any]  # the address file's network entry (a JSON document)
    deployed: bool
    gas: tuple[GasRecord, ...] = ()
    seconds: float = 0.0

    @property
    def total_gas(self) -> int:
        return sum(g.gas_used for g in self.gas)


def _deploy(w3: Web3, owner: LocalAccount, name: str, args: list[Any], gas: list[GasRecord]) -> str:
    contract = load_contract(w3, name, None)  # ocean-lib's own artifact loader
    tx = contract.constructor(*args).build_transaction({"from": owner.address})
    receipt = send_raw(w3, owner, tx)
    gas.append(receipt_gas(f"deploy {name}", receipt))
    address = receipt["contractAddress"]
    if address is None:
        raise RuntimeError(f"deploying {name} created no contract")
    return str(Web3.to_checksum_address(address))


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
    report = DeployReport(
        entry, deployed=True, gas=tuple(gas), seconds=time.perf_counter() - started
    )
    log.info("deployed Ocean contracts: %d txs, %d gas", len(gas), report.total_gas)
    return report


def fund_ocean(w3: Web3, owner: LocalAccount, ocean: str, to: str, amount_wei: int) -> GasRecord:
    """Dev chains only: send mock OCEAN from the deployer to an account (e.g. the researcher)."""
    return _call(
        w3, owner, "OceanToken", ocean, "transfer", Web3.to_checksum_address(to), amount_wei
    )


@dataclass(frozen=True)
class DeploySettings:
    """The deployment command: the Ocean settings, and how much mock OCEAN the researcher gets."""

    fund_researcher: int = field(
        default=1000,
        metadata=flag(
            "mock OCEAN for the researcher on the development network (0: none)",
            env="OCEAN_FUND_RESEARCHER",
        ),
    )
    ocean: OceanSettings = field(default_factory=OceanSettings, metadata=nested(""))


def fund_researcher(
    settings: OceanSettings, w3: Web3, owner: LocalAccount, ocean: str, tokens: int
) -> GasRecord | None:
    """Top the researcher up to `tokens` mock OCEAN (development network only), else None."""
    if settings.network_name != "development" or tokens <= 0:
        return None
    researcher = wallet(settings.researcher_key).address
    amount = tokens * ONE_TOKEN
    if DatatokenBase.get_typed(ocean_config(settings, w3), ocean).balanceOf(researcher) >= amount:
        return None
    return fund_ocean(w3, owner, ocean, researcher, amount)


def main(argv: list[str] | None = None) -> int:
    """Deploy (idempotently), fund the dev researcher, print the JSON summary."""
    settings = parse_settings(
        DeploySettings,
        argv,
        prog="python -m marketplace.ocean.deploy",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ocean = settings.ocean
    w3 = connect(ocean.rpc_url)
    owner = wallet(ocean.publisher_key)
    report = deploy_contracts(w3, owner, ocean.address_file, ocean.network_name)
    gas = list(report.gas)
    funded = fund_researcher(ocean, w3, owner, report.addresses["Ocean"], settings.fund_researcher)
    if funded is not None:
        gas.append(funded)
    summary = {
        "address_file": str(ocean.address_file),
        "network": ocean.network_name,
        "deployed": report.deployed,
        "seconds": round(report.seconds, 3),
        "total_gas": report.total_gas,
        "transactions": [asdict(g) for g in gas],
        "addresses": report.addresses,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")  # the command's output is this JSON
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
