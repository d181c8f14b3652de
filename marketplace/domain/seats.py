"""How many seats a case's panel has: a function of its escalation level only, never of votes.

A seat is one doctor who may see the image. Seats are never freed, so anyone who can claim sees
only ``seats - claims``, and both terms are independent of the votes: seats grow by a fixed
number at each escalation (the case's review window running out, a clock), and claims only
ever grow. The consensus rule may widen the *number of votes needed* (3 -> 5 -> 7) when votes
disagree, but that changes no seat: a widened panel waits for the seats of the next
escalation, so nothing a doctor or the clinic observes before settlement depends on a vote.
"""

from __future__ import annotations

from marketplace.domain.consensus import PanelRule


def seats_open(panel: PanelRule, escalation_level: int, escalation_seats: int) -> int:
    """Seats of a case at ``escalation_level``: the first panel, plus ``escalation_seats`` per
    escalation, never more than ``panel.max_panel`` (the most doctors who ever see an image)."""
    if escalation_level < 0 or escalation_seats < 0:
        raise ValueError("escalation level and seats per escalation must be non-negative")
    return min(panel.max_panel, panel.panel_size + escalation_level * escalation_seats)
