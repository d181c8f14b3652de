"""Party 0's patient API on :8080: upload an image, follow the case, serve doctors' signed links.

Handlers parse and validate, call one use case (:mod:`predictor.submission`), and format the
answer; errors become JSON through one table (:data:`ERROR_STATUS`). The API depends on an
:class:`~predictor.inference_queue.InferenceQueue`, not on the MPC engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from sqlalchemy.orm import Session, sessionmaker

from infra.courier import Courier, add_inbox_route, courier_ctx
from infra.metrics import add_metrics_route
from infra.openapi import add_openapi_route, load_spec
from infra.tokens import hash_token
from infra.web import ApiError, error_middleware, in_session, run_blocking, secure_headers
from marketplace.domain.status import CaseStatus
from marketplace.errors import CaseNotFound, WrongPatientToken
from marketplace.messages import CLINIC, MARKETPLACE
from predictor.access import store as access_store
from predictor.access.policy import SERVED, Refusal
from predictor.access.protocol import DOCTOR_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from predictor.access.store import ImageRequest
from predictor.clinic import cases
from predictor.clinic.cases import UNATTESTED_NOTE, PatientView
from predictor.clinic.models import ClinicInbox, ClinicOutbox
from predictor.images import ImageStore
from predictor.inference_queue import InferenceQueue, ModelCard
from predictor.metrics import PatientSideMetrics
from predictor.outcomes import OutcomeWaiters
from predictor.settings import PredictorSettings
from predictor.submission import case_for_patient, submit_case
from predictor.uploads import (
    CorruptImage,
    EmptyUpload,
    MalformedUpload,
    UnsupportedImage,
    UploadRejected,
    UploadTooLarge,
    validate_image,
)
from predictor.viewer import add_viewer_routes

routes = web.RouteTableDef()

MAX_WAIT_S = 30.0
#: How often the front door asks the store about awaited cases other party pairs decided.
OUTCOME_POLL_S = 0.2
UNAUTHENTICATED = {Refusal.NOT_ENROLLED, Refusal.REVOKED, Refusal.BAD_SIGNATURE, Refusal.REPLAY}
REFUSAL_DETAIL = {
    Refusal.NOT_ENROLLED: "this doctor is not enrolled at the clinic",
    Refusal.REVOKED: "this doctor's key was revoked; ask the clinic to re-enrol you",
    Refusal.BAD_SIGNATURE: "the request's signature is invalid or outside its 60 s window",
    Refusal.REPLAY: "this signed request was already used",
    Refusal.NO_SEAT: "this doctor holds no seat on this case",
    Refusal.SETTLED: "the case is closed: image access ended with it",
    Refusal.VIEWER_CAP: "this case's image has been shown to as many doctors as the clinic allows",
    Refusal.DAILY_CAP: "the clinic's daily limit of images for this doctor is reached",
}
OPENAPI = Path(__file__).resolve().parent / "patient_openapi.yaml"

#: The one place where the patient side's errors become HTTP statuses.
ERROR_STATUS: dict[type[Exception], int] = {
    MalformedUpload: 400,
    EmptyUpload: 400,
    CorruptImage: 400,
    UploadTooLarge: 413,
    UnsupportedImage: 415,
    UploadRejected: 400,
    WrongPatientToken: 403,
    CaseNotFound: 404,
}


@dataclass(frozen=True)
class PatientSide:
    settings: PredictorSettings
    sessions: sessionmaker[Session]
    images: ImageStore
    queue: InferenceQueue
    #: Database and file work runs here so the event loop never blocks on SQLite or fsync.
    executor: ThreadPoolExecutor
    waiters: OutcomeWaiters
    metrics: PatientSideMetrics


PATIENT_SIDE = web.AppKey("patient_side", PatientSide)


#: the ``consent`` form field's accepted answers (absent: no)
_CONSENT = {"yes": True, "true": True, "no": False, "false": False}


async def _read_upload(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """The ``file`` part of a multipart form, refusing to buffer more than ``limit`` bytes,
    and the patient's answer in the optional ``consent`` part (may the settled case teach
    the model; default no)."""
    if not request.content_type.startswith("multipart/"):
        raise MalformedUpload('send the image as multipart form field "file"')
    reader = await request.multipart()
    data: bytes | None = None
    consent = False
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "consent":
            consent = await _read_consent(part)
            continue
        if part.name != "file" or data is not None:
            continue
        chunks, size = [], 0
        while chunk := await part.read_chunk(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"upload exceeds {limit} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
    if data is None:
        raise MalformedUpload('no multipart field named "file"')
    return data, consent


async def _read_consent(part: BodyPartReader) -> bool:
    text = b""
    while chunk := await part.read_chunk():
        text += chunk
        if len(text) > 64:
            break
    answer = text.decode("utf-8", "replace").strip().lower()
    if answer not in _CONSENT:
        raise MalformedUpload('consent must be "yes" or "no"', code="bad_consent")
    return _CONSENT[answer]


@routes.post("/image")
async def post_image(request: web.Request) -> web.Response:
    side = request.app[PATIENT_SIDE]
    limit = side.settings.max_upload_bytes
    try:
        data, consent = await _read_upload(request, limit)
        accepted = validate_image(data, max_bytes=limit, max_pixels=side.settings.max_image_pixels)
    except UploadRejected as exc:
        side.metrics.uploads_rejected.labels(exc.code).inc()
        raise
    submission = await run_blocking(
        side.executor,
        submit_case,
        side.sessions,
        side.images,
        side.queue,
        accepted,
        now=datetime.now(UTC),
        teaching_consent=consent,
    )
    side.metrics.cases_submitted.inc()
    status_url = f"/case/{submission.case_id}"
    return web.json_response(
        {
            "case_id": submission.case_id,
            "patient_token": submission.patient_token,
            "status": submission.status.value,
            "status_url": status_url,
        },
        status=202,
        headers={"Location": status_url},
    )


def _patient_token(request: web.Request) -> str:
    """The patient token from the Authorization header only: a token in a URL would end up
    in access logs, browser history and Referer headers."""
    header = request.headers.get("Authorization", "")
    token = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    if not token:
        raise ApiError(
            401, "missing_token", "pass the patient token as 'Authorization: Bearer <token>'"
        )
    return token


@routes.get("/case/{case_id}")
async def get_case(request: web.Request) -> web.Response:
    side = request.app[PATIENT_SIDE]
    token = _patient_token(request)
    try:
        wait_s = min(float(request.query.get("wait", 0)), MAX_WAIT_S)
    except ValueError as exc:
        raise ApiError(400, "bad_request", "wait must be a number of seconds") from exc
    case_id = request.match_info["case_id"]

    # Register before reading, so an outcome recorded right after the read still wakes us.
    outcome = side.waiters.register(case_id) if wait_s > 0 else None
    try:
        view = await run_blocking(side.executor, case_for_patient, side.sessions, case_id, token)
        if outcome is not None and view.status is CaseStatus.QUEUED:
            try:
                await asyncio.wait_for(outcome.wait(), wait_s)
            except TimeoutError:
                return web.json_response(_case_json(view, side.queue.status().model))
            view = await run_blocking(
                side.executor, case_for_patient, side.sessions, case_id, token
            )
    finally:
        if outcome is not None:
            side.waiters.release(case_id)
    return web.json_response(_case_json(view, side.queue.status().model))


def _case_json(view: PatientView, serving: ModelCard | None) -> dict[str, object]:
    """The case as the patient sees it; a queued case names the model that will answer it."""
    answer = view.to_json()
    if view.status is CaseStatus.QUEUED and serving is not None and serving.attested is not None:
        answer["model_version"] = serving.model_version
        answer["passport_id"] = serving.passport_id
        answer["model_attested"] = serving.attested
        if not serving.attested:
            answer["model_note"] = UNATTESTED_NOTE
    return answer


@routes.get("/image/{case_id}")
async def get_image(request: web.Request) -> web.StreamResponse:
    """A case's image, for an enrolled doctor who signs the request with their own key.

    The clinic decides: the doctor must be enrolled here (not revoked), the request freshly
    signed by the enrolled key and never seen before, the marketplace must have granted the
    doctor a seat (a ``seat.granted`` message), the case unsettled, and the clinic's caps
    unbroken. Every answer is recorded for the patient's audit.
    """
    side = request.app[PATIENT_SIDE]
    image_request = ImageRequest(
        case_id=request.match_info["case_id"],
        doctor_id=request.headers.get(DOCTOR_HEADER, ""),
        timestamp=request.headers.get(TIMESTAMP_HEADER, ""),
        signature=request.headers.get(SIGNATURE_HEADER, ""),
    )
    caps = side.settings.access_caps
    # A doctor who just claimed may arrive before the marketplace's seat.granted message:
    # wait a little for it rather than turning them away.
    deadline = time.monotonic() + side.settings.seat_wait_s
    while time.monotonic() < deadline and await _in_session(
        side, access_store.awaiting_seat, image_request, datetime.now(UTC), caps
    ):
        await asyncio.sleep(0.1)
    result = await _in_session(
        side, access_store.decide, image_request, now=datetime.now(UTC), caps=caps
    )
    if result != SERVED:
        status = 401 if result in UNAUTHENTICATED else 403
        raise ApiError(status, result, REFUSAL_DETAIL.get(result, "image access refused"))
    found = side.images.find(image_request.case_id)
    if found is None:
        raise ApiError(404, "image_not_found", "no image for this case")
    path, content_type = found
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, no-store"}
    )


@routes.get("/case/{case_id}/access")
async def get_access_log(request: web.Request) -> web.Response:
    """The patient's audit: every image request on their case (doctor pseudonym, time, result)."""
    side = request.app[PATIENT_SIDE]
    token = _patient_token(request)
    records = await _in_session(
        side, access_store.access_log, request.match_info["case_id"], hash_token(token)
    )
    return web.json_response(
        {
            "case_id": request.match_info["case_id"],
            "accesses": [
                {"doctor": r.doctor_id, "at": r.at.isoformat(), "result": r.result} for r in records
            ],
        }
    )


async def _in_session(side: PatientSide, fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await in_session(side.executor, side.sessions, fn, *args, **kwargs)


async def _watch_outcomes(side: PatientSide) -> None:
    """Wake ``?wait=`` requests whose case another party pair (another process) decided."""
    while True:
        await asyncio.sleep(OUTCOME_POLL_S)
        awaited = side.waiters.waiting_ids()
        if not awaited:
            continue
        try:
            decided = await _in_session(side, cases.decided_among, awaited)
        except Exception:  # noqa: BLE001 - a database hiccup: the waiters time out as before
            continue
        if decided:
            side.waiters.notify(decided)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    status = request.app[PATIENT_SIDE].queue.status()
    return web.json_response(
        {
            "rank": 0,
            "pid": os.getpid(),
            "mpc_ready": status.ready,
            "queued": status.queued,
            "batches": status.batches,
            "images": status.images,
            "model": None
            if status.model is None
            else {
                "backbone": status.model.backbone,
                "sha256": status.model.sha256,
                "model_version": status.model.model_version,
                "passport_id": status.model.passport_id,
                "attested": status.model.attested,
            },
        }
    )


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "service": "crypto-doctor patient API (MPC party 0)",
            "submit": "POST /image (multipart field 'file', JPEG or PNG)",
            "follow": "GET /case/{case_id} with 'Authorization: Bearer <patient_token>'"
            " (add ?wait=N to wait up to N seconds for the prediction)",
            "reference": "GET /openapi.json",
        }
    )


def create_patient_app(
    settings: PredictorSettings,
    sessions: sessionmaker[Session],
    images: ImageStore,
    queue: InferenceQueue,
    waiters: OutcomeWaiters,
    metrics: PatientSideMetrics,
) -> web.Application:
    """The patient API over a case store, party 0's image store and an inference queue.

    ``waiters`` must be the object the queue's owner notifies when outcomes are recorded.
    """
    # Multipart overhead on top of the image; _read_upload enforces the image limit itself.
    app = web.Application(
        client_max_size=settings.max_upload_bytes + 1024 * 1024,
        middlewares=[error_middleware(ERROR_STATUS)],
    )
    side = PatientSide(
        settings, sessions, images, queue, ThreadPoolExecutor(4, "db"), waiters, metrics
    )
    app[PATIENT_SIDE] = side
    secure_headers(app)
    # Messages: case.opened out to the marketplace; seats and diagnoses in from it.
    courier = Courier(
        me=CLINIC,
        private_hex=settings.clinic_key,
        destinations={MARKETPLACE: settings.resolved_marketplace_url},
        sessions=sessions,
        outbox_cls=ClinicOutbox,
        executor=side.executor,
    )
    waiters.on_notify(courier.wake)
    add_inbox_route(
        app,
        me=CLINIC,
        peers={MARKETPLACE: settings.market_public_key},
        sessions=sessions,
        inbox_cls=ClinicInbox,
        executor=side.executor,
        handlers=cases.HANDLERS,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        waiters.attach(asyncio.get_running_loop())
        watcher = asyncio.create_task(_watch_outcomes(side))
        yield
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        side.executor.shutdown(wait=True)

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(courier_ctx(courier))
    app.add_routes(routes)
    metrics.party_restarts.set(settings.restarts)
    add_metrics_route(
        app,
        metrics.registry,
        settings.operator_token,
        before_scrape=lambda: metrics.queue_depth.set(queue.pending()),
    )
    add_viewer_routes(app)
    add_openapi_route(app, load_spec(OPENAPI))
    return app
