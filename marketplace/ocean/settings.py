"""Settings for the Ocean side of crypto-doctor: one frozen dataclass, CLI flags + env fallbacks.

Defaults work offline: a local ganache chain (started by the project) with a fixed development
mnemonic, publisher = account 0, researcher = account 1, provider (download service) = account 0.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

# Ocean's own local setup (barge) uses this mnemonic; it only ever holds play money.
DEV_MNEMONIC = "taxi music thumb unique chat sand crew more leg another off lamp"
DEV_CHAIN_ID = 8996
ENV_PREFIX = "CRYPTO_DOCTOR_"
DEFAULT_QUASI_IDENTIFIERS = ("day", "backbone", "reviewers")
ONE_TOKEN = 10**18  # datatokens and OCEAN have 18 decimals; amounts are integers of wei


def dev_key(index: int, mnemonic: str = DEV_MNEMONIC) -> str:
    """Private key (0x-hex) of account `index` of a mnemonic, on ganache's derivation path."""
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")
    return acct.key.hex() if acct.key.hex().startswith("0x") else "0x" + acct.key.hex()


def account(private_key: str) -> LocalAccount:
    """Wallet object ocean-lib accepts in tx_dict["from"] (needs .address and ._private_key)."""
    return Account.from_key(private_key)


@dataclass(frozen=True)
class OceanSettings:
    """Everything the publisher, the download service and the researcher CLI need."""

    rpc_url: str = "http://127.0.0.1:8545"
    address_file: Path = Path("var/ocean/address.json")
    data_dir: Path = Path("var/ocean")
    publisher_key: str = ""
    provider_key: str = ""
    researcher_key: str = ""
    k: int = 5
    price_wei: int = 10 * ONE_TOKEN  # OCEAN per datatoken, in wei
    order_timeout_s: int = 3600  # how long an order grants a download, like Ocean's service timeout
    service_url: str = "http://127.0.0.1:8082"  # where the download endpoint is reachable
    quasi_identifiers: tuple[str, ...] = DEFAULT_QUASI_IDENTIFIERS
    network_name: str = "development"
    db_url: str = "sqlite:///var/crypto-doctor.sqlite3"  # the marketplace database (shared)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.price_wei <= 0:
            raise ValueError("price must be positive")
        if self.order_timeout_s <= 0:
            raise ValueError("order timeout must be positive")
        # Frozen: fill key defaults through object.__setattr__ so callers never see "".
        if not self.publisher_key:
            object.__setattr__(self, "publisher_key", dev_key(0))
        if not self.provider_key:
            object.__setattr__(self, "provider_key", self.publisher_key)
        if not self.researcher_key:
            object.__setattr__(self, "researcher_key", dev_key(1))

    @property
    def csv_path(self) -> Path:
        return self.data_dir / "crypto-doctor-diagnoses.csv"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "publisher.sqlite3"

    @property
    def orders_path(self) -> Path:
        return self.data_dir / "orders.sqlite3"

    @property
    def asset_path(self) -> Path:
        return self.data_dir / "asset.json"


_ENV_NAMES = {
    "rpc_url": "OCEAN_RPC_URL",
    "address_file": "OCEAN_ADDRESS_FILE",
    "data_dir": "OCEAN_DATA_DIR",
    "publisher_key": "OCEAN_PUBLISHER_KEY",
    "provider_key": "OCEAN_PROVIDER_KEY",
    "researcher_key": "OCEAN_RESEARCHER_KEY",
    "k": "OCEAN_K",
    "price_wei": "OCEAN_PRICE_WEI",
    "order_timeout_s": "OCEAN_ORDER_TIMEOUT_S",
    "service_url": "OCEAN_SERVICE_URL",
    "quasi_identifiers": "OCEAN_QUASI_IDENTIFIERS",
    "network_name": "OCEAN_NETWORK",
    "db_url": "DB_URL",
}


def _convert(name: str, raw: str) -> object:
    if name in ("address_file", "data_dir"):
        return Path(raw)
    if name in ("k", "price_wei", "order_timeout_s"):
        return int(raw)
    if name == "quasi_identifiers":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register one --flag per setting (dashes for underscores); unset flags fall back to env."""
    for f in fields(OceanSettings):
        env = ENV_PREFIX + _ENV_NAMES.get(f.name, f.name.upper())
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, help=f"env {env}"
        )


def settings_from(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> OceanSettings:
    """Build settings: CLI flag, else CRYPTO_DOCTOR_* env var, else the offline default."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for f in fields(OceanSettings):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = env.get(ENV_PREFIX + _ENV_NAMES.get(f.name, f.name.upper()))
        if raw is not None and raw != "":
            values[f.name] = _convert(f.name, raw)
    return OceanSettings(**values)  # type: ignore[arg-type]
