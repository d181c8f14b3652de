"""`python -m marketplace.ocean.publish`: publish pending research rows once, or every N seconds.

Reads settled-case rows from the marketplace database (CRYPTO_DOCTOR_DB_URL), keeps the
CSV k-anonymous, and puts its digest on the data NFT. When the chain is down the run logs it and
the rows stay queued; the next run (or the next tick with --every) retries them.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from dataclasses import asdict

from marketplace.ocean.publisher import Publisher
from marketplace.ocean.rows import MarketplaceRowSource
from marketplace.ocean.settings import add_arguments, settings_from
from marketplace.ocean.state import OceanState

log = logging.getLogger("marketplace.ocean.publish")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=float, default=0, help="repeat every N seconds (0: once)")
    parser.add_argument("--limit", type=int, default=10_000, help="rows fetched per run")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = settings_from(args)
    publisher = Publisher(
        settings,
        MarketplaceRowSource.from_url(settings.db_url),
        OceanState(settings.state_path),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        result = publisher.publish(limit=args.limit)
        summary = asdict(result)
        summary["gas"] = [asdict(g) for g in result.gas]
        log.info("publish run: %s", json.dumps(summary))
        if args.every <= 0:
            return 1 if result.chain_down else 0
        if stop.wait(args.every):
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
