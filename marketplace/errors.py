"""Exceptions of the marketplace, mapped to HTTP errors in one place (``service.errors``)."""

from __future__ import annotations


class MarketplaceError(Exception):
    """Base class; ``code`` is the stable machine-readable error name."""

    code = "marketplace_error"


class CaseNotFound(MarketplaceError):
    code = "case_not_found"


class WrongPatientToken(MarketplaceError):
    code = "wrong_patient_token"


class InvalidInput(MarketplaceError):
    code = "invalid_input"


class CaseNotClaimable(MarketplaceError):
    """The case is not open for review, is full, or the doctor's tier does not admit it."""

    code = "case_not_claimable"


class TierTooLow(MarketplaceError):
    code = "tier_too_low"


class AlreadyClaimed(MarketplaceError):
    code = "already_claimed"


class NotOnPanel(MarketplaceError):
    """The doctor has not claimed this case, so may not see its image or vote on it."""

    code = "not_on_panel"


class AlreadyVoted(MarketplaceError):
    code = "already_voted"


class CaseNotOpen(MarketplaceError):
    code = "case_not_open"


class NotSettled(MarketplaceError):
    code = "not_settled"


class DoctorNotFound(MarketplaceError):
    code = "doctor_not_found"


class TooManyOpenClaims(MarketplaceError):
    """The doctor holds the most unvoted claims on unsettled cases allowed; vote first."""

    code = "too_many_open_claims"


class HospitalNotFound(MarketplaceError):
    code = "hospital_not_found"


class NotYourStatement(MarketplaceError):
    """A hospital asked for another hospital's royalty statement."""

    code = "not_your_statement"


class RateLimited(MarketplaceError):
    """Too many claims (per doctor) or self-registrations (all clients) in the window."""

    code = "rate_limited"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        #: Whole seconds until one more would be allowed (the ``Retry-After`` value).
        self.retry_after_s = retry_after_s
