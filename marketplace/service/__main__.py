"""Run the doctor service standalone: ``python -m marketplace.service --port 8081 --db-url ...``.

Flags and ``CRYPTO_DOCTOR_*`` variables as in ``MarketplaceSettings``; the image-link key comes
from ``CRYPTO_DOCTOR_LINK_SECRET_HEX`` (a random one, with a warning, when it is unset).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from infra.settings import ENV_PREFIX, parse_settings
from marketplace.service import MarketplaceSettings, create_app

log = logging.getLogger("marketplace.service")
LINK_SECRET_ENV = ENV_PREFIX + "LINK_SECRET_HEX"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    env = dict(os.environ if environ is None else environ)
    if not env.get(LINK_SECRET_ENV):
        log.warning("no %s: using a random key; party 0 will reject image links", LINK_SECRET_ENV)
        env[LINK_SECRET_ENV] = secrets.token_hex(32)
    settings = parse_settings(MarketplaceSettings, argv, env, prog="python -m marketplace.service")
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
