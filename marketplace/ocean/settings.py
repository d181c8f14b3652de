"""Settings for the Ocean side of crypto-doctor: one frozen dataclass, built by :mod:`infra.settings`.

Every Ocean process (chain, deployment, publisher, download service, researcher CLI) reads the
same fields: ``--rpc-url`` / ``CRYPTO_DOCTOR_OCEAN_RPC_URL`` and so on. Private keys are secrets:
environment only (``CRYPTO_DOCTOR_OCEAN_PUBLISHER_KEY`` ...), never a flag, never in argv.

Defaults work offline: a local ganache chain (started by the project) with a fixed development
mnemonic, publisher = account 0, researcher = account 1, provider (download service) = account 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from infra.settings import flag
from marketplace.storage.engine import DEFAULT_MARKET_DB_URL

# Ocean's own local setup (barge) uses this mnemonic; it only ever holds play money.
DEV_MNEMONIC = "taxi music thumb unique chat sand crew more leg another off lamp"
DEV_CHAIN_ID = 8996
#: ``unfamiliar``: the model's flag for images unlike its training data is rare, so it is a
#: quasi-identifier too (issue 18); so is ``model_version`` (issue 15): a version served for
#: a short while narrows its cases down to that while.
DEFAULT_QUASI_IDENTIFIERS = ("day", "backbone", "reviewers", "unfamiliar", "model_version")
ONE_TOKEN = 10**18  # datatokens and OCEAN have 18 decimals; amounts are integers of wei


def dev_key(index: int, mnemonic: str = DEV_MNEMONIC) -> str:
    """Private key (0x-hex) of account `index` of a mnemonic, on ganache's derivation path."""
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{index}")
    key: str = acct.key.hex()
    return key if key.startswith("0x") else "0x" + key


def account(private_key: str) -> LocalAccount:
    """Wallet object ocean-lib accepts in tx_dict["from"] (needs .address and ._private_key)."""
    return Account.from_key(private_key)


def _secret_key(who: str) -> dict[str, object]:
    return flag(f"{who}'s private key, 0x-hex", env=f"OCEAN_{who.upper()}_KEY", secret=True)


@dataclass(frozen=True)
class OceanSettings:
    """Everything the publisher, the download service and the researcher CLI need."""

    rpc_url: str = field(
        default="http://127.0.0.1:8545", metadata=flag("chain JSON-RPC URL", env="OCEAN_RPC_URL")
    )
    address_file: Path = field(
        default=Path("var/ocean/address.json"),
        metadata=flag("Ocean contract addresses (ocean-lib's format)", env="OCEAN_ADDRESS_FILE"),
    )
    data_dir: Path = field(
        default=Path("var/ocean"),
        metadata=flag("folder of the CSV, the publisher state, the chain", env="OCEAN_DATA_DIR"),
    )
    publisher_key: str = field(default="", metadata=_secret_key("publisher"))
    provider_key: str = field(default="", metadata=_secret_key("provider"))
    researcher_key: str = field(default="", metadata=_secret_key("researcher"))
    k: int = field(default=5, metadata=flag("k of the k-anonymity rule", env="OCEAN_K"))
    price_wei: int = field(
        default=10 * ONE_TOKEN, metadata=flag("OCEAN wei per datatoken", env="OCEAN_PRICE_WEI")
    )
    order_timeout_s: int = field(
        default=3600,
        metadata=flag("seconds an order grants a download", env="OCEAN_ORDER_TIMEOUT_S"),
    )
    service_url: str = field(
        default="http://127.0.0.1:8082",
        metadata=flag("where the download endpoint is reachable", env="OCEAN_SERVICE_URL"),
    )
    quasi_identifiers: tuple[str, ...] = field(
        default=DEFAULT_QUASI_IDENTIFIERS,
        metadata=flag("columns a k-anonymity group shares", env="OCEAN_QUASI_IDENTIFIERS"),
    )
    network_name: str = field(
        default="development", metadata=flag("address file network entry", env="OCEAN_NETWORK")
    )
    db_url: str = field(
        default=DEFAULT_MARKET_DB_URL, metadata=flag("the marketplace's store (publisher's source)")
    )
    operator_token: str = field(
        default="", metadata=flag("bearer token for /metrics from off this host", secret=True)
    )

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
