"""One MPC party as one OS process: party 0 (patient API), party 1 (doctor API) or the TTP dealer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

from aiohttp import web

from marketplace.domain.policy import MarketPolicy
from marketplace.storage import make_engine, make_sessionmaker, migrate
from models.mpc import DEALER_RANK, PartyConfig, run_dealer
from predictor.engine import ModelSideEngine, PatientSideEngine
from predictor.images import ImageStore
from predictor.patient_api import create_patient_app
from predictor.settings import PredictorSettings

log = logging.getLogger("predictor.party")


def configure_logging(rank: int) -> None:
    """Every record of an MPC process names its party."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"[party {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _party_config(settings: PredictorSettings, rank: int) -> PartyConfig:
    return PartyConfig(
        rank=rank,
        master_port=settings.master_port,
        master_addr=settings.master_addr,
        provider=settings.provider,
        num_threads=settings.num_threads,
    )


def doctor_app(settings: PredictorSettings) -> web.Application:
    """The marketplace's doctor service, hosted by party 1."""
    from marketplace.service import MarketplaceSettings, create_app

    # Marketplace policy (quorum, pricing, ...) still comes from its own CRYPTO_DOCTOR_* variables.
    return create_app(
        MarketplaceSettings.from_env(
            db_url=settings.db_url,
            host=settings.host,
            port=settings.doctor_port,
            image_link_secret=settings.link_secret,
            patient_base_url=settings.resolved_patient_url,
        )
    )


async def _serve(app: web.Application, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("listening on http://%s:%d", host, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_party(settings: PredictorSettings) -> int:
    """Run the party named by ``settings.rank`` until it is told to stop; return an exit code."""
    rank = settings.rank
    configure_logging(rank)
    if rank == DEALER_RANK:
        run_dealer(_party_config(settings, rank))
        return 0
    if not settings.link_secret_hex:
        log.error("both parties need the same --link-secret-hex (or CRYPTO_DOCTOR_LINK_SECRET_HEX)")
        return 2
    migrate(settings.db_url)
    session_factory = make_sessionmaker(make_engine(settings.db_url))
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    outcome: dict[str, BaseException | None] = {}

    def on_exit(exc: BaseException | None) -> None:
        outcome["exc"] = exc
        loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    if rank == 0:
        engine = PatientSideEngine(
            _party_config(settings, 0),
            session_factory,
            ImageStore(settings.data_dir),
            max_batch=settings.max_batch,
            batch_wait_ms=settings.batch_wait_ms,
            heartbeat_s=settings.heartbeat_s,
            # Bounties are priced here (party 0) with the same policy party 1's marketplace uses.
            policy=MarketPolicy.from_env(os.environ),
            on_exit=on_exit,
        )
        app, port = create_patient_app(settings, session_factory, engine), settings.patient_port
    else:
        audit = None
        if settings.control_log:
            handle = open(settings.control_log, "a", buffering=1)  # noqa: SIM115 - lives as long as the party
            audit = lambda message: handle.write(json.dumps(message) + "\n")  # noqa: E731
        engine = ModelSideEngine(
            _party_config(settings, 1), settings.resolved_model_path, on_exit=on_exit, audit=audit
        )
        engine.start()
        app, port = doctor_app(settings), settings.doctor_port
    try:
        loop.run_until_complete(_serve(app, settings.host, port, stop))
    finally:
        loop.close()
    exc = outcome.get("exc")
    if exc is not None:
        log.error("exiting after MPC failure: %r", exc)
        return 1
    return 0
