"""What the marketplace tells the clinic, posted to its outbox in the caller's transaction.

The courier (``infra.courier``) delivers the outbox in order, signed, until the clinic
acknowledges each message; the clinic's inbox applies each once. Only two facts leave the
market: a seat was granted (on a claim) and a case settled (its diagnosis) - never a vote.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from infra import mailbox
from marketplace.messages import CLINIC, CaseSettled, SeatGranted
from marketplace.storage.models import Outbox


def tell_clinic(session: Session, message: SeatGranted | CaseSettled, now: datetime) -> str:
    """Queue ``message`` for the clinic in the caller's unit of work; returns its message id."""
    return mailbox.post(
        session, Outbox, destination=CLINIC, type=message.TYPE, body=message.body(), now=now
    )
