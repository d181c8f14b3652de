"""The model version that predicted a case (issue 15): from case.opened to doctors and research."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from marketplace import intake, research, review
from marketplace.messages import CaseOpened, MessageError
from tests.marketplace.flows import case_opened, make_doctors
from tests.marketplace.helpers import T0

LATER = T0 + timedelta(minutes=3)
PASSPORT = "0x" + "Ab" * 20


def attested(**changes: object) -> CaseOpened:
    message = replace(
        case_opened(confidence=0.97),
        model_version="lenet v2",
        passport_id=PASSPORT,
        model_attested=True,
    )
    return replace(message, **changes)


def test_the_version_travels_on_the_wire_and_older_clinics_send_none() -> None:
    message = attested()
    assert CaseOpened.parse(message.body()) == message
    old = case_opened().body()
    for key in ("model_version", "passport_id", "model_attested"):
        del old[key]
    parsed = CaseOpened.parse(old)
    assert (parsed.model_version, parsed.passport_id, parsed.model_attested) == (None, None, None)
    for bad in ({"model_attested": "yes"}, {"model_version": ""}, {"passport_id": "x" * 43}):
        with pytest.raises(MessageError):
            CaseOpened.parse(message.body() | bad)


def test_doctors_see_the_version_and_research_rows_carry_it(session) -> None:
    versions = [attested(), attested(model_version="lenet (unattested)", passport_id=None,
                                     model_attested=False), case_opened(confidence=0.97)]  # fmt: skip
    for message in versions:
        assert intake.open_case_now(session, message, now=T0) is True
    doctor_id = make_doctors(session, 1, reputation=200)[0][0]
    pool = {card.case_id: card for card in review.list_pool(session, doctor_id)}
    first, unattested, old = (pool[m.case_id] for m in versions)
    assert (first.model_version, first.passport_id, first.model_attested) == (
        "lenet v2",
        PASSPORT,
        True,
    )
    assert unattested.model_attested is False and unattested.passport_id is None
    assert (old.model_version, old.model_attested) == (None, None)

    for message in versions:
        for doctor, _ in make_doctors(session, 3, reputation=200):
            review.claim_case(session, doctor, message.case_id, now=LATER)
            review.cast_vote(session, doctor, message.case_id, label="tumor", note=None, now=LATER)
    rows = research.unpublished_rows(session, limit=10)
    assert [row["model_version"] for row in rows] == ["lenet v2", "lenet (unattested)", "unknown"]
    settled = review.history(session, doctor)
    assert settled[0].model_version is None  # the last panel's case: the old clinic's
