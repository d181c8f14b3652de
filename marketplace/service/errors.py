"""The one table mapping the marketplace's domain errors to HTTP statuses.

``infra.web.error_middleware(STATUS)`` answers ``{"error": exc.code, "detail": message}`` with
the status of the exception's class or its nearest listed base.
"""

from __future__ import annotations

from marketplace import errors

STATUS: dict[type[Exception], int] = {
    errors.MarketplaceError: 400,
    errors.InvalidInput: 400,
    errors.NotOnPanel: 403,
    errors.NotYourStatement: 403,
    errors.TierTooLow: 403,
    errors.WrongPatientToken: 403,
    errors.CaseNotFound: 404,
    errors.DoctorNotFound: 401,
    errors.HospitalNotFound: 404,
    errors.AlreadyClaimed: 409,
    errors.AlreadyVoted: 409,
    errors.CaseNotClaimable: 409,
    errors.CaseNotOpen: 409,
    errors.NotSettled: 409,
    errors.TooManyOpenClaims: 409,
    errors.RateLimited: 429,
}
