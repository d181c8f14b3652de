"""The life of a case, as one enum every layer uses (the database stores its values)."""

from __future__ import annotations

from enum import StrEnum


class CaseStatus(StrEnum):
    #: Stored by party 0, waiting for its encrypted prediction.
    QUEUED = "queued"
    #: Predicted and priced: in the pool, no doctor has claimed it yet.
    OPEN = "open"
    #: At least one doctor holds a seat on its panel.
    UNDER_REVIEW = "under_review"
    #: The panel agreed: diagnosis recorded, bounty paid out.
    SETTLED = "settled"
    #: The image could not be run (the reason is shown to the patient).
    FAILED = "failed"


#: Statuses in which doctors may claim, view and vote.
REVIEWABLE: tuple[CaseStatus, ...] = (CaseStatus.OPEN, CaseStatus.UNDER_REVIEW)
