"""Deploy Ocean's V4 contracts to the configured chain (idempotent) and fund the dev researcher.

    python scripts/deploy_ocean.py [--rpc-url URL] [--address-file var/ocean/address.json]

Writes the address file in the format ocean-lib reads and prints a JSON summary (addresses,
whether anything was deployed, gas per transaction, seconds). Funding the researcher with mock
OCEAN only happens on the development network, where the OCEAN token is our own mock.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marketplace.ocean.chain import connect, wallet  # noqa: E402
from marketplace.ocean.deploy import deploy_contracts, fund_ocean  # noqa: E402
from marketplace.ocean.settings import ONE_TOKEN, add_arguments, settings_from  # noqa: E402

log = logging.getLogger("deploy_ocean")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--fund-researcher",
        type=int,
        default=1000,
        help="mock OCEAN to give the researcher account on the development network (0: none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = settings_from(args)
    w3 = connect(settings.rpc_url)
    owner = wallet(settings.publisher_key)
    report = deploy_contracts(w3, owner, settings.address_file, settings.network_name)
    gas = [g.__dict__ for g in report.gas]
    if settings.network_name == "development" and args.fund_researcher > 0:
        researcher = wallet(settings.researcher_key).address
        amount = args.fund_researcher * ONE_TOKEN
        from ocean_lib.models.datatoken_base import DatatokenBase  # ERC20 view helpers

        from marketplace.ocean.chain import ocean_config

        ocean = DatatokenBase.get_typed(ocean_config(settings, w3), report.addresses["Ocean"])
        if ocean.balanceOf(researcher) < amount:
            gas.append(
                fund_ocean(w3, owner, report.addresses["Ocean"], researcher, amount).__dict__
            )
    summary = {
        "address_file": str(settings.address_file),
        "network": settings.network_name,
        "deployed": report.deployed,
        "seconds": round(report.seconds, 3),
        "total_gas": report.total_gas,
        "transactions": gas,
        "addresses": report.addresses,
    }
    print(json.dumps(summary, indent=2))  # the CLI's output is this JSON document
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
