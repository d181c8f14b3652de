"""Run the doctor service standalone: ``python -m marketplace.service --port 8081 --db-url ...``."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from marketplace.service import MarketplaceSettings, create_app


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = MarketplaceSettings.from_args(argv)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
