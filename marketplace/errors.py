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
