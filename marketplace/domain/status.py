"""The life of a case, as one enum every layer uses (each store keeps its values as text)."""

from __future__ import annotations

from enum import StrEnum


class CaseStatus(StrEnum):
    #: Stored by the clinic (party 0), waiting for its encrypted prediction.
    QUEUED = "queued"
    #: Predicted and priced: in the pool, no doctor has claimed it yet.
    OPEN = "open"
    #: At least one doctor holds a seat on its panel.
    UNDER_REVIEW = "under_review"
    #: The panel agreed: diagnosis recorded, bounty paid out.
    SETTLED = "settled"
    #: The image could not be run (the reason is shown to the patient).
    FAILED = "failed"


#: The statuses a case can have in the marketplace's store: it only learns of a case once
#: the clinic reports the prediction (``case.opened``), so never ``queued`` or ``failed``.
MARKET_STATUSES: tuple[CaseStatus, ...] = (
    CaseStatus.OPEN,
    CaseStatus.UNDER_REVIEW,
    CaseStatus.SETTLED,
)

#: Statuses in which doctors may claim, view and vote.
REVIEWABLE: tuple[CaseStatus, ...] = (CaseStatus.OPEN, CaseStatus.UNDER_REVIEW)
