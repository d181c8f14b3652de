"""The marketplace's end of the message link with the clinic: its inbox and its courier.

``POST /messages`` takes the clinic's signed ``case.opened`` and opens the market case in the
same transaction as the inbox row (exactly once across redeliveries and restarts), and its
``cases.taught`` (which settled cases taught a promoted model); a courier
delivers the outbox (``seat.granted``, ``case.settled``) to ``{patient_base_url}/messages``,
retrying while the clinic is down. Messages from anyone but the clinic's key are refused.
"""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy.orm import Session

from infra.courier import Courier, Handler, add_inbox_route, courier_ctx
from infra.messaging import Envelope
from marketplace import intake, teaching
from marketplace.domain.policy import MarketPolicy
from marketplace.errors import InvalidInput
from marketplace.messages import CLINIC, MARKETPLACE, CaseOpened, CasesTaught, MessageError
from marketplace.service.context import COURIER, EXECUTOR, SESSIONS, SETTINGS, utcnow
from marketplace.storage.models import Inbox, Outbox

log = logging.getLogger(__name__)


def case_opened_handler(policy: MarketPolicy) -> Handler:
    """``case.opened`` -> :func:`intake.open_case`, inside the inbox's unit of work.

    A body that does not parse or validate raises: the inbox rolls back and answers 500, so
    the message stays at the head of the clinic's outbox (visible there, never lost).
    """

    def handle(session: Session, envelope: Envelope) -> None:
        try:
            message = CaseOpened.parse(envelope.body)
        except MessageError as exc:
            raise InvalidInput(f"case.opened: {exc}") from exc
        intake.open_case(session, message, now=utcnow(), policy=policy)

    return handle


def cases_taught_handler(session: Session, envelope: Envelope) -> None:
    """``cases.taught`` -> :func:`teaching.record_taught`, inside the inbox's unit of work."""
    try:
        message = CasesTaught.parse(envelope.body)
    except MessageError as exc:
        raise InvalidInput(f"cases.taught: {exc}") from exc
    teaching.record_taught(session, message, now=utcnow())


def install(app: web.Application) -> None:
    """Mount ``POST /messages`` and run the courier to the clinic while the app runs.

    Call after the database's ``cleanup_ctx`` is added, so the courier stops before the
    database pool it uses is shut down.
    """
    settings, sessions, executor = app[SETTINGS], app[SESSIONS], app[EXECUTOR]
    peers = {CLINIC: settings.clinic_public_key} if settings.clinic_public_key else {}
    if not peers:
        log.warning("no clinic public key: POST /messages refuses every message")
    add_inbox_route(
        app,
        me=MARKETPLACE,
        peers=peers,
        sessions=sessions,
        inbox_cls=Inbox,
        executor=executor,
        handlers={
            CaseOpened.TYPE: case_opened_handler(settings.policy),
            CasesTaught.TYPE: cases_taught_handler,
        },
    )
    courier = Courier(
        MARKETPLACE,
        settings.signing_key,
        {CLINIC: settings.patient_base_url},
        sessions,
        Outbox,
        executor,
        poll_s=settings.courier_poll_s,
        max_backoff_s=settings.courier_max_backoff_s,
    )
    app[COURIER] = courier
    app.cleanup_ctx.append(courier_ctx(courier))
