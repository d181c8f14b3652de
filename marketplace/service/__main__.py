"""Run the marketplace service as its own process: ``python -m marketplace.service``.

    python -m marketplace.service --db-url URL --host H --port P \\
        --patient-base-url http://clinic:8080 --clinic-public-key HEX

with the marketplace's private key in ``CRYPTO_DOCTOR_MARKET_KEY`` (a random one, with a
warning, when it is unset: then no clinic knows its public key, so image links and messages
from it are refused there). Every other flag and ``CRYPTO_DOCTOR_*`` variable is as in
``MarketplaceSettings``; ``--help`` lists them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from infra.messaging import generate_key
from infra.settings import ENV_PREFIX, parse_settings
from infra.web import run_service
from marketplace.service import MarketplaceSettings, create_app

log = logging.getLogger("marketplace.service")
MARKET_KEY_ENV = ENV_PREFIX + "MARKET_KEY"
DESCRIPTION = (
    "The marketplace: doctors' API and page, the review market, its own store, and signed "
    "messages with the clinic (POST /messages in; a courier out to --patient-base-url). "
    f"Its Ed25519 private key comes from {MARKET_KEY_ENV} (environment only)."
)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter at every start
    env = dict(os.environ if environ is None else environ)
    random_key = not env.get(MARKET_KEY_ENV)
    if random_key:
        env[MARKET_KEY_ENV] = generate_key()
    settings = parse_settings(
        MarketplaceSettings,
        argv,
        env,
        prog="python -m marketplace.service",
        description=DESCRIPTION,
    )
    if random_key:
        log.warning(
            "no %s: using a random key; the clinic will refuse this marketplace's messages "
            "and image links",
            MARKET_KEY_ENV,
        )
    log.info(
        "marketplace public key %s (the clinic's CRYPTO_DOCTOR_MARKET_PUBLIC_KEY); clinic at %s",
        settings.market_public_key,
        settings.patient_base_url,
    )
    run_service(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
