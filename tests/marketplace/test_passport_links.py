"""Doctors' case answers link the readable passport of the model that predicted the case (issue 15).

The link is ``{passport_view_url}/passports/{passport_id}`` on the Ocean service; a case with
no passport id (served unattested, or from before passports), a clinic's id that is not a chain
address, or a marketplace without ``--passport-view-url`` gets ``passport_url: null``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from infra.messaging import generate_key
from infra.settings import parse_settings
from marketplace import intake
from marketplace.domain.consensus import PanelRule
from marketplace.domain.policy import MarketPolicy
from marketplace.messages import CaseOpened
from marketplace.passport_links import check_view_url, passport_url
from marketplace.service import MarketplaceSettings, create_app
from marketplace.service.__main__ import main as service_main
from tests.marketplace.flows import case_opened, make_doctors
from tests.marketplace.servers import Api, serve

PASSPORT = "0x" + "aB" * 20
VIEW = "http://127.0.0.1:8082"
#: One seat, so one vote settles a case and it shows in the history.
POLICY = MarketPolicy(panel=PanelRule(panel_size=1, quorum=1, widen_step=1, max_panel=1))


def test_the_link_is_built_in_one_place_from_a_checked_id() -> None:
    assert passport_url(VIEW, PASSPORT) == f"{VIEW}/passports/{PASSPORT}"
    # A base behind a proxy keeps its path; a trailing slash does not double.
    base = "https://ocean.example.org/crypto-doctor/"
    assert passport_url(base, PASSPORT) == f"{base}passports/{PASSPORT}"
    for bad in (None, "", "0x" + "ab" * 19, "0x" + "g" * 40, PASSPORT + "/../../admin",
                "../" + PASSPORT[3:], PASSPORT + "?x=1", " " + PASSPORT, PASSPORT + "\n"):  # fmt: skip
        assert passport_url(VIEW, bad) is None, bad
    assert passport_url("", PASSPORT) is None  # no view configured: no link


def test_only_plain_http_and_https_bases_are_accepted() -> None:
    for good in ("", VIEW, "https://ocean.example.org", "http://[::1]:8082/view/"):
        check_view_url(good)
    for bad in (
        "javascript:alert(1)",
        "ftp://127.0.0.1:8082",
        "127.0.0.1:8082",
        "http://",
        "http://user:secret@127.0.0.1:8082",
        "http://127.0.0.1:8082/?x=1",
        "http://127.0.0.1:8082/#top",
        "http://127.0.0.1:80x2",
        "http://127.0.0.1:8082/a b",
    ):
        with pytest.raises(ValueError, match="passport_view_url"):
            check_view_url(bad)


def test_the_setting_defaults_to_the_local_ocean_service_and_is_checked_at_start(
    capsys,
) -> None:
    env = {"CRYPTO_DOCTOR_MARKET_KEY": generate_key()}
    assert parse_settings(MarketplaceSettings, [], env).passport_view_url == VIEW
    given = env | {"CRYPTO_DOCTOR_PASSPORT_VIEW_URL": "https://ocean.example.org"}
    assert parse_settings(MarketplaceSettings, [], given).passport_view_url == (
        "https://ocean.example.org"
    )
    off = env | {"CRYPTO_DOCTOR_PASSPORT_VIEW_URL": ""}
    assert parse_settings(MarketplaceSettings, [], off).passport_view_url == ""
    with pytest.raises(SystemExit) as stopped:
        service_main(["--passport-view-url", "javascript:alert(1)"], env)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "passport_view_url must be an http:// or https:// base URL" in err
    assert "javascript:alert(1)" in err


def _open(session, message: CaseOpened) -> str:
    assert intake.open_case_now(session, message, now=message.submitted_at, policy=POLICY)
    return message.case_id


def _first_events(url: str, token: str) -> dict[str, Any]:
    """The first batch of ``GET /api/events``: each event's JSON by name, up to ``ready``."""
    events: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    with requests.get(f"{url}/api/events", headers=headers, stream=True, timeout=10) as reply:
        name = ""
        for line in reply.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
                if name == "ready":
                    break
            elif line.startswith("data: "):
                events[name] = json.loads(line.removeprefix("data: "))
    return events


@pytest.fixture
def cases(session) -> dict[str, str]:
    """An attested case, an unattested one, one from before passports, one whose clinic sent a
    passport id that is not a chain address."""
    now = datetime.now(UTC)
    base = case_opened(confidence=0.97, now=now)
    attested = replace(base, model_version="lenet v2", passport_id=PASSPORT, model_attested=True)
    return {
        "attested": _open(session, attested),
        "unattested": _open(
            session,
            replace(
                case_opened(confidence=0.97, now=now),
                model_version="lenet (unattested)",
                model_attested=False,
            ),
        ),  # fmt: skip
        "old": _open(session, case_opened(confidence=0.97, now=now)),
        "odd": _open(
            session,
            replace(
                case_opened(confidence=0.97, now=now),
                model_version="lenet v2",
                passport_id="../../admin",
                model_attested=True,
            ),
        ),  # fmt: skip
    }


def test_every_case_answer_links_the_models_passport(db_url, session, cases) -> None:
    settings = MarketplaceSettings(
        db_url=db_url, signing_key=generate_key(), policy=POLICY, passport_view_url=VIEW + "/"
    )
    [(_, token)] = make_doctors(session, 1, reputation=200)
    expected = {key: None for key in cases} | {"attested": f"{VIEW}/passports/{PASSPORT}"}
    with serve(create_app(settings)) as url:
        api = Api(url)
        pool = {c["case_id"]: c for c in api("GET", "/api/pool", token).json()["cases"]}
        assert {key: pool[case_id]["passport_url"] for key, case_id in cases.items()} == expected
        assert pool[cases["attested"]]["passport_id"] == PASSPORT
        assert pool[cases["unattested"]]["model_attested"] is False

        claimed = api("POST", f"/api/cases/{cases['attested']}/claim", token)
        assert claimed.status_code == 201
        assert claimed.json()["passport_url"] == expected["attested"]
        api("POST", f"/api/cases/{cases['old']}/claim", token)
        claims = {c["case_id"]: c for c in api("GET", "/api/claims", token).json()["cases"]}
        assert claims[cases["attested"]]["passport_url"] == expected["attested"]
        assert claims[cases["old"]]["passport_url"] is None

        streamed = _first_events(url, token)  # the page's live view: the same answers
        assert streamed["claims"]["cases"] == api("GET", "/api/claims", token).json()["cases"]
        assert streamed["pool"] == api("GET", "/api/pool", token).json()

        vote = {"case_id": cases["attested"], "label": "tumor"}
        assert api("POST", "/decision", token, json=vote).status_code == 201
        [settled] = api("GET", "/api/me/history", token).json()["settled"]
        assert (settled["case_id"], settled["passport_url"]) == (
            cases["attested"],
            expected["attested"],
        )


def test_no_view_configured_means_no_link(db_url, session, cases) -> None:
    settings = MarketplaceSettings(
        db_url=db_url, signing_key=generate_key(), policy=POLICY, passport_view_url=""
    )
    [(_, token)] = make_doctors(session, 1, reputation=200)
    with serve(create_app(settings)) as url:
        api = Api(url)
        pool = api("GET", "/api/pool", token).json()["cases"]
        assert len(pool) == len(cases) and {c["passport_url"] for c in pool} == {None}
        # The version and the id are still there: only the link is missing.
        [attested] = [c for c in pool if c["case_id"] == cases["attested"]]
        assert (attested["model_version"], attested["passport_id"]) == ("lenet v2", PASSPORT)
        claimed = api("POST", f"/api/cases/{cases['attested']}/claim", token).json()
        assert claimed["passport_url"] is None
