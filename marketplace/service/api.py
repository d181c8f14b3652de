"""JSON API for doctors (``Authorization: Bearer <token>``) and ``POST /decision``.

Each handler checks the request, runs one use case in the DB pool (``infra.web.in_session``)
and turns its frozen dataclass into JSON.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

from aiohttp import web

from infra.web import ApiError, in_session, read_json
from marketplace import doctors, review, track_record
from marketplace.image_links import viewer_url
from marketplace.passport_links import passport_url
from marketplace.service.context import COURIER, EXECUTOR, SESSIONS, SETTINGS, WAKEUP, utcnow

routes = web.RouteTableDef()
_CASE_ID = re.compile(r"[0-9a-f]{32}")


def _plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: v.isoformat() if isinstance(v, datetime) else v for key, v in pairs}


def as_json(result: Any) -> dict[str, Any]:
    """A use case's frozen dataclass as JSON fields (datetimes in ISO 8601)."""
    return dataclasses.asdict(result, dict_factory=_plain)


def case_json(
    result: review.CaseCard | review.SettledReview, passport_view_url: str
) -> dict[str, Any]:
    """A case object of the doctor API: the use case's fields and ``passport_url``, the readable
    passport of the model version that predicted it (null: no valid passport id or no view)."""
    return as_json(result) | {"passport_url": passport_url(passport_view_url, result.passport_id)}


async def current_doctor(request: web.Request) -> str:
    """Doctor id from the bearer token: 401 when missing or unknown."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <your API token>")
    app = request.app
    doctor_id = await in_session(app[EXECUTOR], app[SESSIONS], doctors.authenticate, token.strip())
    if doctor_id is None:
        raise ApiError(401, "unauthorized", "unknown API token")
    return doctor_id


def case_id_of(request: web.Request) -> str:
    case_id = request.match_info["case_id"]
    if not _CASE_ID.fullmatch(case_id):
        raise ApiError(404, "case_not_found", "no such case")
    return case_id


async def json_body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return body


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.post("/api/doctors")
async def register(request: web.Request) -> web.Response:
    """Self-registration, within the registration rate of all clients together: returns the
    API token once (only its hash is stored)."""
    app = request.app
    settings = app[SETTINGS]
    if not settings.allow_registration:
        raise ApiError(403, "registration_closed", "registration is disabled on this server")
    body = await json_body(request)
    for key in ("display_name", "specialty"):
        if not isinstance(body.get(key), str):
            raise ApiError(400, "invalid_input", f"{key} is required")
    wallet = body.get("wallet_address")
    if wallet is not None and not isinstance(wallet, str):
        raise ApiError(400, "invalid_input", "wallet_address must be a string")
    doctor_id, token = await in_session(
        app[EXECUTOR],
        app[SESSIONS],
        doctors.register_doctor,
        display_name=body["display_name"],
        specialty=body["specialty"],
        wallet_address=wallet,
        now=utcnow(),
        policy=settings.policy,
    )
    return web.json_response({"doctor_id": doctor_id, "token": token}, status=201)


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    doctor_id = await current_doctor(request)
    app = request.app
    profile = await in_session(
        app[EXECUTOR], app[SESSIONS], doctors.doctor_profile, doctor_id, app[SETTINGS].policy
    )
    return web.json_response(as_json(profile))


@routes.get("/api/me/history")
async def my_history(request: web.Request) -> web.Response:
    doctor_id = await current_doctor(request)
    app = request.app
    settled = await in_session(app[EXECUTOR], app[SESSIONS], review.history, doctor_id)
    view_url = app[SETTINGS].passport_view_url
    return web.json_response({"settled": [case_json(row, view_url) for row in settled]})


@routes.get("/api/me/track-record")
async def my_track_record(request: web.Request) -> web.Response:
    """Reputation and earnings after each settled case, and agreement with the diagnoses."""
    doctor_id = await current_doctor(request)
    app = request.app
    record = await in_session(
        app[EXECUTOR], app[SESSIONS], track_record.track_record, doctor_id, app[SETTINGS].policy
    )
    return web.json_response(as_json(record))


@routes.get("/api/pool")
async def pool(request: web.Request) -> web.Response:
    doctor_id = await current_doctor(request)
    app = request.app
    cards = await in_session(
        app[EXECUTOR], app[SESSIONS], review.list_pool, doctor_id, app[SETTINGS].policy
    )
    view_url = app[SETTINGS].passport_view_url
    return web.json_response({"cases": [case_json(card, view_url) for card in cards]})


@routes.get("/api/claims")
async def claims(request: web.Request) -> web.Response:
    doctor_id = await current_doctor(request)
    app = request.app
    claimed = await in_session(app[EXECUTOR], app[SESSIONS], review.my_claims, doctor_id)
    view_url = app[SETTINGS].passport_view_url
    return web.json_response({"cases": [case_json(case, view_url) for case in claimed]})


def _image_url(request: web.Request, case_id: str, doctor_id: str) -> str:
    return viewer_url(request.app[SETTINGS].patient_base_url, case_id, doctor_id)


@routes.post("/api/cases/{case_id}/claim")
async def claim(request: web.Request) -> web.Response:
    doctor_id = await current_doctor(request)
    case_id = case_id_of(request)
    app = request.app
    card = await in_session(
        app[EXECUTOR],
        app[SESSIONS],
        review.claim_case,
        doctor_id,
        case_id,
        now=utcnow(),
        policy=app[SETTINGS].policy,
    )
    app[COURIER].wake()  # the clinic learns of the seat (seat.granted) now, not at the next poll
    app[WAKEUP].wake()  # doctors' live pages look again now (a panel may be full)
    body = case_json(card, app[SETTINGS].passport_view_url) | {
        "image_url": _image_url(request, case_id, doctor_id)
    }
    return web.json_response(body, status=201)


@routes.get("/api/cases/{case_id}/image-link")
async def image_link(request: web.Request) -> web.Response:
    """The clinic's viewer page for this case, for panel members only. The link grants nothing:
    the clinic serves the image to the doctor's own enrolled key, and only with a seat."""
    doctor_id = await current_doctor(request)
    case_id = case_id_of(request)
    app = request.app
    await in_session(app[EXECUTOR], app[SESSIONS], review.require_claim, doctor_id, case_id)
    return web.json_response({"url": _image_url(request, case_id, doctor_id)})


@routes.get("/api/cases/{case_id}/disclosure")
async def case_disclosure(request: web.Request) -> web.Response:
    """All votes and salts of a settled case, for participants to verify every receipt."""
    doctor_id = await current_doctor(request)
    case_id = case_id_of(request)
    app = request.app
    disclosed = await in_session(
        app[EXECUTOR], app[SESSIONS], review.disclosure, doctor_id, case_id
    )
    return web.json_response(as_json(disclosed))


@routes.post("/decision")
async def decision(request: web.Request) -> web.Response:
    """Cast a sealed vote ``{case_id, label, note?}``; answers with the vote's receipt."""
    doctor_id = await current_doctor(request)
    body = await json_body(request)
    case_id, label, note = body.get("case_id"), body.get("label"), body.get("note")
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise ApiError(400, "invalid_input", "case_id must be a case id")
    if not isinstance(label, str):
        raise ApiError(400, "invalid_input", "label must be 'tumor' or 'no_tumor'")
    if note is not None and not isinstance(note, str):
        raise ApiError(400, "invalid_input", "note must be text")
    app = request.app
    receipt = await in_session(
        app[EXECUTOR],
        app[SESSIONS],
        review.cast_vote,
        doctor_id,
        case_id,
        label=label,
        note=note,
        now=utcnow(),
        policy=app[SETTINGS].policy,
    )
    app[COURIER].wake()  # the vote may have settled the case (case.settled for the clinic)
    app[WAKEUP].wake()  # live pages look again now: they change only if the case settled
    return web.json_response(as_json(receipt), status=201)
