"""The clinic and the marketplace as two organisations: two stores, signed messages only.

Both real apps run in-process over real HTTP on 127.0.0.1, each on its own database; the
clinic predicts with the plaintext seed model (the encrypted path is ``test_service.py``).
Either side can be stopped and started again on the port its peer expects.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from infra.messaging import generate_key
from infra.net import free_port
from marketplace import doctors
from marketplace.storage import make_engine, make_sessionmaker, migrate
from tests.marketplace.servers import serve
from tests.predictor.orgs import (
    Organisations,
    eventually,
    patient_view,
    post_message,
    seat_message,
    submit,
)


@pytest.fixture
def orgs(tmp_path: Path) -> Organisations:
    return Organisations(tmp_path, generate_key(), generate_key(), free_port(), free_port())


@pytest.fixture
def clinic(orgs: Organisations) -> Iterator[str]:
    app, close = orgs.clinic_app()
    try:
        with serve(app, port=orgs.clinic_port) as url:
            yield url
    finally:
        close()


def test_cases_wait_in_the_clinics_outbox_while_the_marketplace_is_down(orgs, clinic, mri_images):
    cases = [submit(clinic, p) for p in mri_images["yes"][:2] + mri_images["no"][:1]]
    for case in cases:
        assert eventually(lambda c=case: patient_view(clinic, c)["status"] == "open")
    assert orgs.market_count("select count(*) from cases") == 0  # nobody to tell yet
    migrate(f"sqlite:///{orgs.market_db}")
    with serve(orgs.market_app(), port=orgs.market_port):
        assert eventually(lambda: orgs.market_count("select count(*) from cases") == 3)
        fundings = "select count(*) from ledger_transactions where kind = 'fund_escrow'"
        assert eventually(lambda: orgs.market_count(fundings) == 3)
    # Each case arrived once: one market case, one escrow funding, one inbox entry.
    assert orgs.market_count("select count(*) from cases") == 3
    assert orgs.market_count(fundings) == 3
    assert orgs.market_count("select count(*) from inbox") == 3
    ids = {c["case_id"] for c in cases}
    with sqlite3.connect(orgs.market_db) as db:
        assert {row[0] for row in db.execute("select id from cases")} == ids
        columns = {row[1] for row in db.execute("pragma table_info(cases)")}
    assert "patient_token_hash" not in columns  # the marketplace stores no patient secret


def test_a_diagnosis_made_while_the_clinic_is_down_reaches_the_patient_later(orgs, mri_images):
    migrate(f"sqlite:///{orgs.market_db}")
    engine = make_engine(f"sqlite:///{orgs.market_db}")
    with make_sessionmaker(engine)() as session:
        tokens = [
            doctors.create_doctor(
                session, display_name=f"Dr {i}", specialty="neuro", reputation=200,
                now=datetime.now(UTC),
            )[1]
            for i in range(3)
        ]  # fmt: skip
    engine.dispose()
    with serve(orgs.market_app(), port=orgs.market_port) as market:
        app, close = orgs.clinic_app()
        with serve(app, port=orgs.clinic_port) as clinic:
            case = submit(clinic, mri_images["yes"][0])
            case_id = case["case_id"]
            assert eventually(lambda: orgs.market_count("select count(*) from cases") == 1)
        close()  # the clinic goes down; the panel carries on
        for token in tokens:
            auth = {"Authorization": f"Bearer {token}"}
            claim = requests.post(f"{market}/api/cases/{case_id}/claim", headers=auth, timeout=10)
            assert claim.status_code == 201, claim.text
            vote = requests.post(
                f"{market}/decision",
                headers=auth,
                json={"case_id": case_id, "label": "tumor"},
                timeout=10,
            )
            assert vote.status_code == 201, vote.text
        settled = "select count(*) from cases where status = 'settled'"
        assert orgs.market_count(settled) == 1
        app, close = orgs.clinic_app()  # the clinic comes back, with its store
        try:
            with serve(app, port=orgs.clinic_port) as clinic:
                assert eventually(lambda: patient_view(clinic, case)["status"] == "settled")
                view = patient_view(clinic, case)
        finally:
            close()
    assert view["diagnosis"]["label"] == "tumor"
    assert view["diagnosis"]["reviewers"] == 3


def test_forged_and_replayed_messages_are_refused(orgs, clinic, mri_images):
    case = submit(clinic, mri_images["no"][0])

    def post(raw: bytes) -> requests.Response:
        return post_message(clinic, raw)

    # Forged: signed by someone other than the marketplace.
    forged = post(seat_message(case["case_id"], "d" * 32, key=generate_key()))
    assert forged.status_code == 401
    # Genuine, then replayed: applied once.
    genuine = seat_message(case["case_id"], "d" * 32, key=orgs.market_key)
    assert post(genuine).json() == {"accepted": True}
    assert post(genuine).json() == {"accepted": False}
    # A capture replayed after the window: refused outright.
    stale = seat_message(case["case_id"], "d" * 32, key=orgs.market_key, sent_at=time.time() - 3600)
    assert post(stale).status_code == 401
    # Tampered in flight: the signature no longer matches.
    tampered = json.loads(genuine)
    tampered["body"]["doctor_id"] = "e" * 32
    assert post(json.dumps(tampered).encode()).status_code == 401
    with sqlite3.connect(orgs.clinic_db) as db:
        seats = db.execute("select doctor_id from seats").fetchall()
    assert seats == [("d" * 32,)]
