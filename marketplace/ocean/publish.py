"""`python -m marketplace.ocean.publish`: publish pending research rows once, or every N seconds.

Reads settled-case rows from the marketplace database (CRYPTO_DOCTOR_DB_URL), keeps the
CSV k-anonymous, and puts its digest on the data NFT. When the chain is down the run logs it and
the rows stay queued; the next run (or the next tick with --every) retries them.

The publisher serves no HTTP. With `--metrics-port N` it counts its own runs and serves them in
Prometheus text on 127.0.0.1:N only (prometheus_client's own server; 0, the default: off).
The counters live in this process: a restarted publisher starts again from zero, which
Prometheus reads as a counter reset.

With --every it logs the first run, then a run only when it changed something (rows staged,
committed or skipped, a transaction sent, the number of rows waiting for their group), and the
chain going down or coming back once per outage; a single run (no --every) is always logged.
"""

from __future__ import annotations

# ruff: noqa: E402  (the filter below must run before web3 is imported)
import warnings

# web3 6 (6.11.4, for ocean-lib 3.1.2) runs `import pkg_resources` in web3/__init__.py, and
# setuptools warns on every start that pkg_resources is deprecated: nothing an operator can act on.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import json
import logging
import signal
import threading
from dataclasses import asdict, dataclass, field

from prometheus_client import CollectorRegistry, Counter, start_http_server

from infra.settings import flag, nested, parse_settings
from marketplace.ocean.publisher import Publisher, PublishResult
from marketplace.ocean.rows import MarketplaceRowSource
from marketplace.ocean.settings import OceanSettings
from marketplace.ocean.state import OceanState

log = logging.getLogger("marketplace.ocean.publish")


@dataclass(frozen=True)
class PublishSettings:
    """The publisher process: how often, how many rows, its metrics port, the Ocean settings."""

    every: float = field(
        default=0.0, metadata=flag("repeat every N seconds (0: once)", env="OCEAN_PUBLISH_EVERY")
    )
    limit: int = field(
        default=10_000, metadata=flag("rows fetched per run", env="OCEAN_PUBLISH_LIMIT")
    )
    metrics_port: int = field(
        default=0,
        metadata=flag(
            "serve run counters on 127.0.0.1:PORT (0: off)", env="OCEAN_PUBLISH_METRICS_PORT"
        ),
    )
    ocean: OceanSettings = field(default_factory=OceanSettings, metadata=nested(""))

    def __post_init__(self) -> None:
        if self.every < 0 or self.limit < 1 or not 0 <= self.metrics_port < 65536:
            raise ValueError("need every >= 0, limit >= 1 and a metrics port in 0..65535")


class PublishMetrics:
    """Counters of this publisher's runs, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("ocean_publish_runs", "publish runs", registry=self.registry)
        self.chain_down = Counter(
            "ocean_publish_chain_down_runs",
            "publish runs that found the chain down (their rows stay queued)",
            registry=self.registry,
        )
        self.rows_committed = Counter(
            "ocean_publish_rows_committed",
            "rows whose digest went on chain",
            registry=self.registry,
        )

    def record(self, result: PublishResult) -> None:
        self.runs.inc()
        self.rows_committed.inc(result.committed)
        if result.chain_down:
            self.chain_down.inc()

    def serve(self, port: int) -> None:
        """Serve the registry on loopback only (the operator's host: no token needed)."""
        start_http_server(port, addr="127.0.0.1", registry=self.registry)


def worth_logging(result: PublishResult, previous: PublishResult | None) -> bool:
    """Whether a run is worth a line: the first (where things stand), then only a run that
    changed something an operator would want to read about."""
    if previous is None:
        return True
    acted = result.released or result.committed or result.invalid or result.gas
    return bool(acted) or result.held != previous.held


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        PublishSettings,
        argv,
        prog="python -m marketplace.ocean.publish",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # no "Context impl ..." chatter
    publisher = Publisher(
        settings.ocean,
        MarketplaceRowSource.from_url(settings.ocean.db_url),
        OceanState(settings.ocean.state_path),
    )
    metrics = PublishMetrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if settings.every > 0:
        log.info(
            "publishing every %g s (k = %d); runs that change nothing are not logged",
            settings.every,
            settings.ocean.k,
        )
    previous: PublishResult | None = None
    while True:
        result = publisher.publish(limit=settings.limit)
        metrics.record(result)
        if settings.every <= 0 or worth_logging(result, previous):
            log.info("publish run: %s", json.dumps(asdict(result)))
        previous = result
        if settings.every <= 0:
            return 1 if result.chain_down else 0
        if stop.wait(settings.every):
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
