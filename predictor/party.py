"""One MPC party as one OS process: party 0 (patient API), party 1 (the weights) or the dealer.

With several party pairs (or several MPC processes per pair), every party 0 takes cases from
the clinic's store; only pair 0's process 0 also serves the patient API (the front door).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from infra.web import start_service
from models.mpc import DEALER_RANK, PartyConfig, run_dealer
from models.passport.registry import Unattested
from predictor.clinic import cases
from predictor.clinic import queue as queue_store
from predictor.clinic.store import clinic_sessions
from predictor.engine import ModelSideEngine, PatientSideEngine
from predictor.images import ImageStore
from predictor.lease_queue import LeasedCaseQueue
from predictor.metrics import PatientSideMetrics
from predictor.model_passport import EXIT_UNATTESTED, announced_passport
from predictor.outcomes import OutcomeWaiters
from predictor.patient_api import create_patient_app
from predictor.settings import PredictorSettings
from predictor.switch_model import ServingChoice

log = logging.getLogger("predictor.party")


def configure_logging(rank: int, pair: str = "") -> None:
    """Every record of an MPC process names its party (and its pair, when there are several)."""
    where = f"{pair} party {rank}" if pair else f"party {rank}"
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"[{where}] %(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Each start migrates the clinic's store; alembic's INFO lines say nothing an operator needs.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _party_config(settings: PredictorSettings, rank: int) -> PartyConfig:
    return PartyConfig(
        rank=rank,
        master_port=settings.master_port,
        master_addr=settings.master_addr,
        provider=settings.provider,
        num_threads=settings.num_threads,
        interface=settings.mpc_interface or None,
    )


async def _serve(
    app: web.Application | None, settings: PredictorSettings, port: int, stop: asyncio.Event
) -> None:
    if app is None:
        await stop.wait()
        return
    # Under the supervisor, party 0 serves on the socket the supervisor holds for it.
    sock = (
        socket.socket(fileno=settings.patient_socket_fd)
        if settings.patient_socket_fd >= 0
        else None
    )
    runner = await start_service(
        app, host=settings.host, port=port, sock=sock, access_log=settings.access_log
    )
    log.info("listening on http://%s:%d", settings.host, port)
    if settings.ready_fd >= 0:
        # The supervisor stops answering in party 0's place.
        os.write(settings.ready_fd, b"1")
        os.close(settings.ready_fd)
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
    #: Stops the MPC thread; False when it is still inside torch after a grace period.
    stop: Callable[[], bool]


def discard_interrupted_uploads(sessions: sessionmaker[Session], images: ImageStore) -> None:
    """Before serving: drop what a party 0 killed mid-upload left, which no patient was told of.

    Staged files that never got their case's name, and queued cases whose image never
    arrived (the 202 goes out only once the image has its case's name).
    """
    staged = images.discard_staged()
    with sessions() as session:
        queued = cases.unfinished_case_ids(session)
        orphans = [case_id for case_id in queued if images.find(case_id) is None]
        dropped = cases.discard_unacknowledged(session, orphans)
        # The others' uploads completed (their image has its case's name): workers may take them.
        queue_store.release_uploads(session, [c for c in queued if c not in set(dropped)])
    if staged or dropped:
        log.warning(
            "discarded %d staged upload(s) and %d case(s) never acknowledged to a patient "
            "(party 0 stopped mid-upload)",
            staged,
            len(dropped),
        )


def patient_side(
    settings: PredictorSettings,
    sessions: sessionmaker[Session],
    on_exit: Callable[[BaseException | None], None],
) -> PartyRole:
    """Party 0: the MPC engine that reads the images, and (pair 0's process 0) the patient API."""
    metrics, waiters = PatientSideMetrics(), OutcomeWaiters()
    images = ImageStore(settings.resolved_data_dir)
    if settings.serves_patients:
        discard_interrupted_uploads(sessions, images)
    jobs = LeasedCaseQueue(
        sessions,
        settings.worker_id,
        lease_s=settings.lease_s,
        poll_s=settings.queue_poll_ms / 1000.0,
    )
    engine = PatientSideEngine(
        _party_config(settings, 0),
        sessions,
        images,
        jobs,
        max_batch=settings.max_batch,
        batch_wait_ms=settings.batch_wait_ms,
        heartbeat_s=settings.heartbeat_s,
        metrics=metrics,
        on_recorded=waiters.notify_threadsafe,
        on_exit=on_exit,
    )
    if not settings.serves_patients:
        return PartyRole(None, settings.patient_port, engine.start, engine.stop)
    app = create_patient_app(settings, sessions, images, engine, waiters, metrics)
    return PartyRole(app, settings.patient_port, engine.start, engine.stop)


def serving_choice(settings: PredictorSettings) -> ServingChoice:
    """Party 1's serving file, its choices checked as at start (``announced_passport``)."""
    return ServingChoice(
        settings.resolved_serving_file, lambda path: announced_passport(settings, path)
    )


def model_side(
    settings: PredictorSettings,
    on_exit: Callable[[BaseException | None], None],
    passport: dict[str, Any] | None = None,
    model_path: Path | None = None,
    choice: ServingChoice | None = None,
) -> PartyRole:
    """Party 1: the weights' MPC engine; it keeps no case data and serves no HTTP.
    ``model_path``: the checkpoint it starts with (default ``--model-path``)."""
    engine = ModelSideEngine(
        _party_config(settings, 1),
        model_path or settings.resolved_model_path,
        on_exit=on_exit,
        audit=_control_audit(settings),
        passport=passport,
        choice=choice or serving_choice(settings),
    )
    return PartyRole(None, settings.doctor_port, engine.start, engine.stop)


def run_party(settings: PredictorSettings) -> int:
    """Run the party named by ``settings.rank`` until it is told to stop; return an exit code."""
    rank = settings.rank
    assert rank is not None
    several = not settings.serves_patients or settings.pairs * settings.processes_per_pair > 1
    configure_logging(rank, settings.worker_id if several else "")
    if rank == DEALER_RANK:
        run_dealer(_party_config(settings, rank))
        return 0
    passport: dict[str, Any] | None = None
    model_path: Path | None = None
    choice = serving_choice(settings)
    if rank == 1:
        chosen = choice.wanted(settings.resolved_model_path)
        if chosen is not None:  # the model owner's later choice, as it stood when it stopped
            log.info("starting with %s, as %s asks", chosen.path, settings.resolved_serving_file)
            passport, model_path = chosen.passport, chosen.path
        else:
            try:  # before the rendezvous: an unattested model never meets party 0
                passport = announced_passport(settings)
            except Unattested as refusal:
                log.error("refusing to serve: %s", refusal)
                return EXIT_UNATTESTED
    front_door = rank == 0 and settings.serves_patients
    if front_door and not (settings.clinic_key and settings.market_public_key):
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
        else model_side(settings, on_exit, passport, model_path, choice)
    )
    try:
        role.start()
        loop.run_until_complete(_serve(role.app, settings, role.port, stop))
    finally:
        mpc_ended = role.stop()
        loop.close()
    exc = outcome.get("exc")
    code = 0
    if exc is not None:
        log.error("exiting after MPC failure: %r", exc)
        code = 1
    if not mpc_ended:
        # Finalizing the interpreter would cancel the MPC thread inside torch's C++, which
        # aborts with "terminate called without an active exception": leave without it.
        log.info("MPC thread still waiting on the peer; exiting without interpreter cleanup")
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code
