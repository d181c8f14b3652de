"""Researcher CLI: buy access to crypto-doctor's anonymized diagnoses on Ocean, then download.

    python -m marketplace.researcher buy       # buy 1 datatoken, start the order, save it
    python -m marketplace.researcher download  # sign + redeem the saved order, write the CSV

Uses ocean-lib (`Ocean(config)`) with the researcher's own key, from the environment only
(CRYPTO_DOCTOR_OCEAN_RESEARCHER_KEY: a flag would show it to every local user in `ps`); unset,
it is the local chain's development researcher account, which the deployment funds with OCEAN.
The exchange swap and `start_order` are ordinary Ocean V4 transactions; the provider fee comes
from the project's download service (which stands in for Ocean's Provider offline).
`buy` refuses, before spending anything, while the release on chain has no rows (rows are
released in k-anonymous groups only); `--anyway` buys regardless. The address file and the
saved orders default to the project's `var/ocean/`, from whatever folder the CLI is run.
"""

from __future__ import annotations

# ruff: noqa: E402  (the two statements below must run before web3 and alembic are imported)
import logging
import warnings

# web3 6 (6.11.4, for ocean-lib 3.1.2) runs `import pkg_resources` in web3/__init__.py, and
# setuptools warns on every start that pkg_resources is deprecated: nothing a researcher can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
# alembic logs one INFO line per plugin when imported (through marketplace.storage), and
# ocean_lib.example_config has by then called logging.basicConfig(level=INFO) at import.
logging.getLogger("alembic").setLevel(logging.WARNING)

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from hexbytes import HexBytes
from ocean_lib.models.fixed_rate_exchange import OneExchange
from ocean_lib.ocean.ocean import Ocean

from infra.settings import ENV_PREFIX, add_flags, settings_from
from marketplace.ocean.asset import read_digest
from marketplace.ocean.chain import ChainUnavailable, ocean_config, receipt_gas
from marketplace.ocean.dataset import digest
from marketplace.ocean.orders import sign_download
from marketplace.ocean.settings import ONE_TOKEN, OceanSettings, account

#: The checkout (or editable install) this module belongs to: default paths start here.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Settings whose relative default means "in the project", not "in the current folder".
_PROJECT_PATHS = {"address_file": "OCEAN_ADDRESS_FILE", "data_dir": "OCEAN_DATA_DIR"}

log = logging.getLogger("marketplace.researcher")


class ResearcherError(RuntimeError):
    """Something the researcher must fix or retry (message says what)."""


class EmptyRelease(ResearcherError):
    """The release on chain has no rows yet: buying now would pay for a header only."""


@dataclass(frozen=True)
class Purchase:
    """A started order: the transaction to redeem, what it cost, how long it took."""

    order_tx: str
    datatoken: str
    consumer: str
    paid_ocean_wei: int
    gas: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class Downloaded:
    """A CSV written to `file` whose sha256 is the one on the data NFT."""

    file: str
    sha256: str
    rows: int
    seconds: float


def _get(settings: OceanSettings, path: str, **params: str) -> dict[str, Any]:
    reply = requests.get(settings.service_url.rstrip("/") + path, params=params, timeout=30)
    if reply.status_code != 200:
        raise ResearcherError(f"{path}: {reply.status_code} {reply.text}")
    document: dict[str, Any] = reply.json()
    return document


def check_address_file(settings: OceanSettings) -> None:
    """Fail with one line naming the file, not with ocean-lib's traceback, when it is missing."""
    path = Path(settings.address_file)
    if not path.is_file():
        raise ResearcherError(
            f"no Ocean address file at {path.resolve()}: start the system (scripts/run) or "
            "deploy the contracts (python -m marketplace.ocean.deploy) first, or name the file "
            f"with --address-file / {ENV_PREFIX}OCEAN_ADDRESS_FILE"
        )


def check_release_has_rows(config: dict[str, Any], info: dict[str, Any]) -> int:
    """Rows in the release, read from the data NFT itself; EmptyRelease when there are none."""
    on_chain = read_digest(config, info["nft"])
    rows = 0 if on_chain is None else on_chain.rows
    if rows == 0:
        extra = info.get("ddo", {}).get("metadata", {}).get("additionalInformation", {})
        k = extra.get("k", "k")
        shared = ", ".join(extra.get("quasiIdentifiers", ())) or "their quasi-identifiers"
        raise EmptyRelease(
            f"the release has 0 rows: rows are released only in groups of {k} settled cases "
            f"sharing {shared}, and no group is complete yet, so buying now pays for a CSV "
            "header only; nothing was spent. Try later, or pass --anyway to buy regardless"
        )
    return rows


def buy(settings: OceanSettings, *, anyway: bool = False) -> Purchase:
    """Swap OCEAN for one datatoken on the fixed-rate exchange and start the order with it.

    Refuses before any transaction when the release has no rows yet, unless ``anyway``.
    """
    started = time.perf_counter()
    me = account(settings.researcher_key)
    check_address_file(settings)
    config = ocean_config(settings)
    info = _get(settings, "/asset")
    if not anyway:
        check_release_has_rows(config, info)
    ocean = Ocean(config)  # unchanged ocean-lib entry point
    datatoken = ocean.get_datatoken(info["datatoken"])
    nft = ocean.get_nft_token(info["nft"])
    if datatoken.address not in nft.getTokensList():
        raise ResearcherError("service lists a datatoken that its data NFT does not own")
    exchange = OneExchange(ocean.fixed_rate_exchange, HexBytes(info["exchange_id"]))
    if exchange.details.datatoken.lower() != datatoken.address.lower():
        raise ResearcherError("exchange does not sell this datatoken")
    gas: dict[str, int] = {}
    if datatoken.balanceOf(me.address) < ONE_TOKEN:
        needed = exchange.BT_needed(ONE_TOKEN, 0)
        if ocean.OCEAN.balanceOf(me.address) < needed:
            raise ResearcherError(
                f"need {needed} OCEAN wei, have {ocean.OCEAN.balanceOf(me.address)}"
            )
        gas["approve OCEAN"] = receipt_gas(
            "approve", ocean.OCEAN.approve(exchange.address, needed, {"from": me})
        ).gas_used
        gas["buy datatoken"] = receipt_gas(
            "buy", exchange.buy_DT(ONE_TOKEN, {"from": me}, max_basetoken_amt=needed)
        ).gas_used
    else:
        needed = 0
    init = _get(settings, "/initialize", consumer=me.address)
    receipt = datatoken.start_order(me.address, 0, init["providerFee"], {"from": me})
    gas["start order"] = receipt_gas("order", receipt).gas_used
    purchase = Purchase(
        order_tx=HexBytes(receipt["transactionHash"]).hex(),
        datatoken=datatoken.address,
        consumer=me.address,
        paid_ocean_wei=needed,
        gas=gas,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info("order %s started for %s", purchase.order_tx, me.address)
    return purchase


def download(settings: OceanSettings, order_tx: str, out: Path) -> Downloaded:
    """Sign the order with the researcher's key, redeem it, check the file against the chain."""
    started = time.perf_counter()
    check_address_file(settings)
    info = _get(settings, "/asset")
    signature = sign_download(settings.researcher_key, order_tx, info["datatoken"])
    reply = requests.post(
        settings.service_url.rstrip("/") + "/download",
        json={"order_tx": order_tx, "signature": signature},
        timeout=60,
    )
    if reply.status_code != 200:
        raise ResearcherError(f"download refused: {reply.status_code} {reply.text}")
    data = reply.content
    sha = digest(data)
    if reply.headers.get("X-Dataset-SHA256") != sha:
        raise ResearcherError("received bytes do not match the digest the service announced")
    on_chain = read_digest(ocean_config(settings), info["nft"])
    if on_chain is None or on_chain.sha256 != sha:
        raise ResearcherError(f"file digest {sha} is not the one on the data NFT ({on_chain})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return Downloaded(
        file=str(out),
        sha256=sha,
        rows=on_chain.rows,
        seconds=round(time.perf_counter() - started, 3),
    )


def _order_file(settings: OceanSettings) -> Path:
    return settings.data_dir / "researcher" / f"{account(settings.researcher_key).address}.json"


def researcher_settings(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> OceanSettings:
    """The CLI's settings: the address file and data folder default to the project's
    `var/ocean/`, whatever the current folder; a path given by flag or environment is
    taken as given (relative to the current folder)."""
    env = os.environ if env is None else env
    rooted = {
        name: PROJECT_ROOT / getattr(OceanSettings, name)  # the field's default, relative
        for name, env_name in _PROJECT_PATHS.items()
        if getattr(args, name, None) is None and not env.get(ENV_PREFIX + env_name)
    }
    return settings_from(OceanSettings, args, env, **rooted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m marketplace.researcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_buy = sub.add_parser("buy", help="buy one datatoken and start an order")
    p_buy.add_argument(
        "--anyway",
        action="store_true",
        help="buy even when the release has no rows yet (the file is then a header only)",
    )
    p_dl = sub.add_parser("download", help="redeem an order and download the CSV")
    p_dl.add_argument("--order-tx", help="order transaction hash (default: the last bought)")
    p_dl.add_argument("--out", type=Path, default=Path("crypto-doctor-diagnoses.csv"))
    for p in (p_buy, p_dl):
        add_flags(p, OceanSettings)
    args = parser.parse_args(argv)
    try:
        settings = researcher_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        account(settings.researcher_key)
    except (ValueError, UnicodeError):
        parser.error(f"{ENV_PREFIX}OCEAN_RESEARCHER_KEY is not a private key (0x + 64 hex digits)")
    # force: ocean-lib already configured the root logger when it was imported
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    try:
        result: Purchase | Downloaded
        if args.command == "buy":
            result = buy(settings, anyway=args.anyway)
            path = _order_file(settings)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(result), indent=2))
        else:
            order_tx = args.order_tx
            if not order_tx:
                path = _order_file(settings)
                if not path.exists():
                    raise ResearcherError("no saved order: run `buy` first or pass --order-tx")
                order_tx = json.loads(path.read_text())["order_tx"]
            result = download(settings, order_tx, args.out)
    except (ResearcherError, ChainUnavailable, requests.RequestException) as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
