"""The one place where domain exceptions become JSON HTTP errors ``{"error", "detail"}``."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from marketplace import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.MarketplaceError], int] = {
    errors.InvalidInput: 400,
    errors.NotOnPanel: 403,
    errors.TierTooLow: 403,
    errors.WrongPatientToken: 403,
    errors.CaseNotFound: 404,
    errors.DoctorNotFound: 401,
    errors.AlreadyClaimed: 409,
    errors.AlreadyVoted: 409,
    errors.CaseNotClaimable: 409,
    errors.CaseNotOpen: 409,
    errors.NotSettled: 409,
}


def json_error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


class ApiError(Exception):
    """Raised by handlers for boundary failures (auth, malformed requests)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except ApiError as exc:
        response = json_error(exc.status, exc.code, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="crypto-doctor"'
        return response
    except errors.MarketplaceError as exc:
        return json_error(STATUS.get(type(exc), 400), exc.code, str(exc) or exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except json.JSONDecodeError:
        return json_error(400, "invalid_json", "request body must be JSON")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal_error", "internal error")
