"""One MPC party as one OS process: party 0 (patient API), party 1 (doctor API) or the TTP dealer."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from models.mpc import DEALER_RANK, PartyConfig, run_dealer
from predictor.clinic.store import clinic_sessions
from predictor.engine import ModelSideEngine, PatientSideEngine
from predictor.images import ImageStore
from predictor.metrics import PatientSideMetrics
from predictor.outcomes import OutcomeWaiters
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
        interface=settings.mpc_interface or None,
    )


async def _serve(app: web.Application | None, host: str, port: int, stop: asyncio.Event) -> None:
    if app is None:
        await stop.wait()
        return
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("listening on http://%s:%d", host, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _control_audit(settings: PredictorSettings) -> Callable[[dict[str, Any]], None] | None:
    """Party 1's audit trail of control messages from party 0 (None when not configured)."""
    if settings.control_log is None:
        return None
    handle: IO[str] = open(settings.control_log, "a", buffering=1)  # noqa: SIM115 - party-long

    def audit(message: dict[str, Any]) -> None:
        handle.write(json.dumps(message) + "\n")

    return audit


@dataclass(frozen=True)
class PartyRole:
    """What one party process serves over HTTP (party 1: nothing), and its MPC thread."""

    app: web.Application | None
    port: int
    start: Callable[[], None]
    stop: Callable[[], None]


def patient_side(
    settings: PredictorSettings,
    sessions: sessionmaker[Session],
    on_exit: Callable[[BaseException | None], None],
) -> PartyRole:
    """Party 0: the patient API over the MPC engine that holds the images."""
    metrics, waiters = PatientSideMetrics(), OutcomeWaiters()
    images = ImageStore(settings.resolved_data_dir)
    engine = PatientSideEngine(
        _party_config(settings, 0),
        sessions,
        images,
        max_batch=settings.max_batch,
        batch_wait_ms=settings.batch_wait_ms,
        heartbeat_s=settings.heartbeat_s,
        metrics=metrics,
        on_recorded=waiters.notify_threadsafe,
        on_exit=on_exit,
    )
    app = create_patient_app(settings, sessions, images, engine, waiters, metrics)
    return PartyRole(app, settings.patient_port, engine.start, engine.stop)


def model_side(
    settings: PredictorSettings, on_exit: Callable[[BaseException | None], None]
) -> PartyRole:
    """Party 1: the weights' MPC engine; it keeps no case data and serves no HTTP."""
    engine = ModelSideEngine(
        _party_config(settings, 1),
        settings.resolved_model_path,
        on_exit=on_exit,
        audit=_control_audit(settings),
    )
    return PartyRole(None, settings.doctor_port, engine.start, lambda: None)


def run_party(settings: PredictorSettings) -> int:
    """Run the party named by ``settings.rank`` until it is told to stop; return an exit code."""
    rank = settings.rank
    assert rank is not None
    configure_logging(rank)
    if rank == DEALER_RANK:
        run_dealer(_party_config(settings, rank))
        return 0
    if rank == 0 and not (settings.clinic_key and settings.market_public_key):
        log.error("party 0 needs CRYPTO_DOCTOR_CLINIC_KEY and --market-public-key")
        return 2
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    outcome: dict[str, BaseException | None] = {}

    def on_exit(exc: BaseException | None) -> None:
        outcome["exc"] = exc
        loop.call_soon_threadsafe(stop.set)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    role = (
        patient_side(settings, clinic_sessions(settings.clinic_db_url), on_exit)
        if rank == 0
        else model_side(settings, on_exit)
    )
    try:
        role.start()
        loop.run_until_complete(_serve(role.app, settings.host, role.port, stop))
    finally:
        role.stop()
        loop.close()
    exc = outcome.get("exc")
    if exc is not None:
        log.error("exiting after MPC failure: %r", exc)
        return 1
    return 0
