"""Party 0's patient API on :8080: upload an image, follow the case, serve doctors' signed links."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from marketplace import cases
from marketplace.doctors import hash_token
from marketplace.errors import CaseNotFound, WrongPatientToken
from marketplace.image_links import verify_image_signature
from predictor.engine import PatientSideEngine
from predictor.images import ImageStore
from predictor.settings import PredictorSettings
from predictor.uploads import UploadRejected, validate_image

routes = web.RouteTableDef()


MAX_WAIT_S = 30.0


class OutcomeWaiters:
    """Lets ``GET /case/{id}?wait=N`` answer as soon as the engine records the case's outcome.

    Lives on the event loop; the MPC thread reaches it only through ``notify_threadsafe``.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Event, int]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def register(self, case_id: str) -> asyncio.Event:
        event, count = self._waiting.get(case_id, (asyncio.Event(), 0))
        self._waiting[case_id] = (event, count + 1)
        return event

    def release(self, case_id: str) -> None:
        event, count = self._waiting[case_id]
        if count == 1:
            del self._waiting[case_id]
        else:
            self._waiting[case_id] = (event, count - 1)

    def notify_threadsafe(self, case_ids: list[str]) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._notify, case_ids)

    def _notify(self, case_ids: list[str]) -> None:
        for case_id in case_ids:
            if case_id in self._waiting:
                self._waiting[case_id][0].set()


@dataclass
class PatientSide:
    settings: PredictorSettings
    session_factory: object
    images: ImageStore
    engine: PatientSideEngine
    #: Database work runs here so the event loop never blocks on SQLite.
    executor: ThreadPoolExecutor
    waiters: OutcomeWaiters


PATIENT_SIDE = web.AppKey("patient_side", PatientSide)


def json_error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


async def _in_db(side: PatientSide, fn, *args, **kwargs):
    def work():
        with side.session_factory() as session:
            return fn(session, *args, **kwargs)

    return await asyncio.get_running_loop().run_in_executor(side.executor, work)


async def _read_upload(request: web.Request, limit: int) -> bytes:
    """The ``file`` part of a multipart form, refusing to buffer more than ``limit`` bytes."""
    if not request.content_type.startswith("multipart/"):
        raise UploadRejected(400, "bad_request", 'send the image as multipart form field "file"')
    reader = await request.multipart()
    async for part in reader:
        if part.name != "file":
            continue
        chunks, size = [], 0
        while chunk := await part.read_chunk(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise UploadRejected(413, "too_large", f"upload exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    raise UploadRejected(400, "bad_request", 'no multipart field named "file"')


@routes.post("/image")
async def post_image(request: web.Request) -> web.Response:
    side = request.app[PATIENT_SIDE]
    limit = side.settings.max_upload_bytes
    try:
        data = await _read_upload(request, limit)
        accepted = validate_image(data, max_bytes=limit, max_pixels=side.settings.max_image_pixels)
    except UploadRejected as exc:
        return json_error(exc.status, exc.code, exc.detail)
    token = secrets.token_urlsafe(32)

    def store(session):
        staged = side.images.stage(accepted.data, accepted.content_type)
        try:
            case_id = cases.create_case(
                session, patient_token_hash=hash_token(token), now=datetime.now(UTC)
            )
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        side.images.commit(staged, case_id)
        return case_id

    case_id = await _in_db(side, store)
    side.engine.submit(case_id)
    status_url = f"/case/{case_id}"
    return web.json_response(
        {
            "case_id": case_id,
            "patient_token": token,
            "status": cases.QUEUED,
            "status_url": status_url,
        },
        status=202,
        headers={"Location": status_url},
    )


def _patient_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return request.query.get("token")


@routes.get("/case/{case_id}")
async def get_case(request: web.Request) -> web.Response:
    side = request.app[PATIENT_SIDE]
    token = _patient_token(request)
    if not token:
        return json_error(
            401,
            "missing_token",
            "pass the patient token as 'Authorization: Bearer <token>' or ?token=",
        )
    try:
        wait_s = min(float(request.query.get("wait", 0)), MAX_WAIT_S)
    except ValueError:
        return json_error(400, "bad_request", "wait must be a number of seconds")
    case_id = request.match_info["case_id"]
    try:
        # Register before reading, so an outcome recorded right after the read still wakes us.
        outcome = side.waiters.register(case_id) if wait_s > 0 else None
        try:
            view = await _in_db(side, cases.patient_view, case_id, hash_token(token))
            if outcome is not None and view["status"] == cases.QUEUED:
                try:
                    await asyncio.wait_for(outcome.wait(), wait_s)
                except TimeoutError:
                    return web.json_response(view)
                view = await _in_db(side, cases.patient_view, case_id, hash_token(token))
        finally:
            if outcome is not None:
                side.waiters.release(case_id)
    except CaseNotFound:
        return json_error(404, "case_not_found", "no such case")
    except WrongPatientToken:
        return json_error(403, "wrong_token", "this token does not open this case")
    return web.json_response(view)


@routes.get("/image/{case_id}")
async def get_image(request: web.Request) -> web.StreamResponse:
    """A claimed case's image, for the doctor named in a link party 1 signed."""
    side = request.app[PATIENT_SIDE]
    case_id, query = request.match_info["case_id"], request.query
    valid = verify_image_signature(
        side.settings.link_secret,
        case_id,
        query.get("doctor", ""),
        query.get("expires", ""),
        query.get("sig", ""),
        time.time(),
    )
    if not valid:
        return json_error(403, "invalid_link", "the image link is invalid or has expired")
    found = side.images.find(case_id)
    if found is None:
        return json_error(404, "image_not_found", "no image for this case")
    path, content_type = found
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "private, no-store"}
    )


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    side = request.app[PATIENT_SIDE]
    engine = side.engine
    return web.json_response(
        {
            "rank": 0,
            "pid": os.getpid(),
            "mpc_ready": engine.ready.is_set(),
            "queued": engine.pending_count(),
            "batches": engine.stats.batches,
            "images": engine.stats.images,
            "model": None
            if engine.card is None
            else {
                "backbone": engine.card.architecture.backbone,
                "sha256": engine.card.model_sha256,
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
        }
    )


def create_patient_app(
    settings: PredictorSettings, session_factory, engine: PatientSideEngine
) -> web.Application:
    # Multipart overhead on top of the image; _read_upload enforces the image limit itself.
    app = web.Application(client_max_size=settings.max_upload_bytes + 1024 * 1024)
    side = PatientSide(
        settings,
        session_factory,
        engine.image_store,
        engine,
        ThreadPoolExecutor(4, "db"),
        OutcomeWaiters(),
    )
    engine.on_recorded = side.waiters.notify_threadsafe
    app[PATIENT_SIDE] = side

    async def lifecycle(app: web.Application):
        side.waiters.loop = asyncio.get_running_loop()
        engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)
        side.executor.shutdown(wait=True)

    app.cleanup_ctx.append(lifecycle)
    app.add_routes(routes)
    return app
