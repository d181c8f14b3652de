"""The clinic's own rules for showing an image, whatever the marketplace says (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Refusal(StrEnum):
    NOT_ENROLLED = "not_enrolled"
    REVOKED = "revoked"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    NO_SEAT = "no_seat"
    SETTLED = "case_closed"
    VIEWER_CAP = "viewer_cap"
    DAILY_CAP = "daily_cap"


SERVED = "served"


@dataclass(frozen=True)
class AccessCaps:
    """Bounds that hold even against a marketplace that grants seats to anyone it likes."""

    #: Distinct doctors who may ever see one case's image (counted across panel widening).
    max_viewers_per_case: int = 7
    #: Images one doctor may be shown in any 24 hours.
    max_views_per_doctor_per_day: int = 100

    def __post_init__(self) -> None:
        if self.max_viewers_per_case < 1 or self.max_views_per_doctor_per_day < 1:
            raise ValueError("access caps must be at least 1")


def over_caps(
    caps: AccessCaps, *, already_viewer: bool, viewers: int, views_today: int
) -> Refusal | None:
    """Which cap a further view would break, if any."""
    if not already_viewer and viewers >= caps.max_viewers_per_case:
        return Refusal.VIEWER_CAP
    if views_today >= caps.max_views_per_doctor_per_day:
        return Refusal.DAILY_CAP
    return None
