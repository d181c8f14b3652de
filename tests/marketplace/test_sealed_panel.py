"""Until a case settles, nothing anyone outside the marketplace sees depends on its votes.

Four cases go through the same steps over real HTTP - three seats claimed, escalated (two
more seats), those claimed, escalated again (the last two seats), those claimed, escalated
once more at the cap - with 0, 1 and 2 votes, and with 3 disagreeing votes (which widen the
panel to 5 votes needed). After every step, a snapshot of every answer a doctor can get
(pool, claims, claim answers, case cards, image links, profile, history, disclosure) from a
doctor who never claims and from each of the seven seat-holders, and of every message the
clinic receives from the marketplace (its outbox: the patient's status at the clinic follows
these alone), is the same for all four cases once case and doctor ids and the clock times of
claims and votes are named by role. A seat-holder's own ``voted`` flag and receipt (and the
model's label, shown once they voted) are the one difference, and are checked to be their own.
The doctors' event stream (``GET /api/events``) is in the snapshot twice: the first batch a
new stream sends each role after every step, and every event that streams held open all along
(by the outsider and two seat-holders) received up to settlement. Then each case settles.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.messaging import generate_key, public_key
from marketplace import doctors, intake, review
from marketplace.domain.policy import MarketPolicy
from marketplace.service import MarketplaceSettings, create_app
from marketplace.storage.models import Case
from tests.marketplace.events import EventLog, first_batch
from tests.marketplace.flows import case_opened, to_clinic
from tests.marketplace.servers import Api, serve

POLICY = MarketPolicy()  # 3 seats, +2 per escalation up to 7; 3 votes, widened 3 -> 5 -> 7
VOTES = {
    "no vote": [],
    "one vote": ["tumor"],
    "two votes": ["tumor", "no_tumor"],
    "three disagreeing votes": ["tumor", "no_tumor", "tumor"],
}
SEATED = [f"seat{i}" for i in range(7)]
ROLES = ["outsider", *SEATED]
#: Clock times that differ between the cases only because requests run one after another.
CLOCK_FIELDS = {"granted_at", "cast_at"}
#: Roles whose event stream stays open from the opening to settlement.
STREAMING = ["outsider", "seat0", "seat2"]
#: The stream's events and the REST answers they carry.
STREAMED = {
    "me": "/api/me",
    "pool": "/api/pool",
    "claims": "/api/claims",
    "history": "/api/me/history",
}


@pytest.fixture
def api(db_url) -> Iterator[Api]:
    settings = MarketplaceSettings(
        db_url=db_url,
        signing_key=generate_key(),
        clinic_public_key=public_key(generate_key()),
        patient_base_url="http://127.0.0.1:9",  # no clinic: messages stay in the outbox
        escalation_interval_s=3600,  # the test escalates, at chosen times
        events_poll_s=1.0,  # claims and votes wake the streams; escalations wait a poll
        policy=POLICY,
    )
    with serve(create_app(settings)) as url:
        yield Api(url)


class Scenario:
    """One case, its doctors by role, and the votes it gets before the escalations."""

    def __init__(self, session, votes: list[str], opened: datetime) -> None:
        message = case_opened(confidence=0.9, now=opened)
        assert intake.open_case_now(session, message, now=opened, policy=POLICY)
        self.case_id = message.case_id
        self.votes = votes
        self.tokens: dict[str, str] = {}
        self.names = {self.case_id: "<case>"}
        for role in ROLES:
            doctor_id, token = doctors.create_doctor(
                session, display_name=role, specialty="neuroradiology", now=opened
            )
            self.tokens[role] = token
            self.names[doctor_id] = role
        self.receipts: dict[str, str] = {}
        self.claim_answers: dict[str, Any] = {}
        self.logs: dict[str, EventLog] = {}

    def open_streams(self, api: Api) -> None:
        self.logs = {role: EventLog(api.url, self.tokens[role]) for role in STREAMING}

    def close_streams(self) -> None:
        for log in self.logs.values():
            log.close()

    def streams_caught_up(self, api: Api) -> None:
        """Wait until every open stream's latest events are the REST answers of now."""
        for role, log in self.logs.items():
            answers = {
                name: api("GET", path, self.tokens[role]).json() for name, path in STREAMED.items()
            }
            log.wait_for(lambda log, want=answers: all(log.latest(n) == a for n, a in want.items()))

    def streamed(self) -> dict[str, Any]:
        """What each open stream received about this case, named by role: each event's
        successive states (a change to the doctor's own vote flag, receipt or model label is
        their own)."""
        seen: dict[str, Any] = {}
        for role, log in self.logs.items():
            # Per event, the states it went through (how two events interleave is timing).
            shown: dict[str, list[Any]] = {}
            for name, data in list(log.events):
                if name == ":":
                    continue
                if name in ("pool", "claims"):
                    data = {"cases": self.own_view(role, self.mine(data["cases"]))}
                states = shown.setdefault(name, [])
                data = self.norm(data)
                if not states or states[-1] != data:  # only what changed about this case
                    states.append(data)
            seen[role] = shown
        return seen

    def own_view(self, role: str, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Cards without the role's own vote flag, receipt and model label, checked to be
        theirs: the model's label is shown only once they voted."""
        cards = [dict(card) for card in cards]
        for card in cards:
            if "voted" in card:
                card.pop("voted")
                card.pop("receipt")
                card.pop("model_label")
        return cards

    def norm(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "<time>" if k in CLOCK_FIELDS else self.norm(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.norm(v) for v in value]
        if isinstance(value, str):
            for real, alias in self.names.items():
                value = value.replace(real, alias)
        return value

    def claim(self, api: Api, role: str) -> None:
        r = api("POST", f"/api/cases/{self.case_id}/claim", self.tokens[role])
        self.claim_answers[role] = (r.status_code, self.norm(r.json()))

    def vote(self, api: Api, role: str, label: str) -> dict[str, Any]:
        r = api(
            "POST", "/decision", self.tokens[role], json={"case_id": self.case_id, "label": label}
        )
        assert r.status_code == 201, r.text
        self.receipts[role] = r.json()["receipt"]
        return self.norm(r.json() | {"receipt": "<receipt>"})

    def mine(self, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [card for card in cards if card["case_id"] == self.case_id]

    def snapshot(self, api: Api, session) -> dict[str, Any]:
        """Everything each role can get about this case, and what the clinic was told."""
        self.streams_caught_up(api)
        seen: dict[str, Any] = {}
        for role in ROLES:
            token = self.tokens[role]
            claims = self.mine(api("GET", "/api/claims", token).json()["cases"])
            for card in claims:  # the one thing that differs: your own vote, shown to you
                assert card.pop("voted") is (role in self.receipts)
                assert card.pop("receipt") == self.receipts.get(role)
                assert (card.pop("model_label") is not None) is (role in self.receipts)
            streamed = first_batch(api.url, token)
            assert set(streamed) == set(STREAMED)
            assert streamed["claims"]["cases"] == api("GET", "/api/claims", token).json()["cases"]
            link = api("GET", f"/api/cases/{self.case_id}/image-link", token)
            disclosure = api("GET", f"/api/cases/{self.case_id}/disclosure", token)
            seen[role] = {
                "pool": self.mine(api("GET", "/api/pool", token).json()["cases"]),
                "claims": claims,
                "me": api("GET", "/api/me", token).json(),
                "history": api("GET", "/api/me/history", token).json(),
                "image-link": (link.status_code, link.json()),
                "disclosure": (disclosure.status_code, disclosure.json()),
                "events, first batch": {
                    "me": streamed["me"],
                    "pool": self.mine(streamed["pool"]["cases"]),
                    "claims": self.own_view(role, self.mine(streamed["claims"]["cases"])),
                    "history": streamed["history"],
                },
            }
        told = [m for m in to_clinic(session) if m["case_id"] == self.case_id]
        return self.norm(
            {
                "answers": seen,
                "claim answers": self.claim_answers,
                "clinic": told,
                "held streams": self.streamed(),
            }
        )


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two snapshots differ, as readable paths (for the failure message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b), key=str)
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_no_answer_or_message_depends_on_the_votes_before_settlement(api, session) -> None:
    opened = datetime.now(UTC).replace(microsecond=0)
    cases = {name: Scenario(session, votes, opened) for name, votes in VOTES.items()}
    vote_answers: list[dict[str, Any]] = []
    for case in cases.values():
        case.open_streams(api)

    def same_for_every_case(step: str) -> None:
        snapshots = {name: case.snapshot(api, session) for name, case in cases.items()}
        first = snapshots["no vote"]
        for name, snapshot in snapshots.items():
            assert snapshot == first, f"after {step}, {name!r}: {differences(first, snapshot)}"

    def everyone(action) -> None:
        for case in cases.values():
            action(case)

    def escalate(at: datetime) -> None:
        escalated = review.escalate_overdue(session, now=at, policy=POLICY)
        assert sorted(escalated) == sorted(c.case_id for c in cases.values())

    same_for_every_case("opening")
    everyone(lambda c: [c.claim(api, role) for role in SEATED[:3]])
    same_for_every_case("three claims")
    for case in cases.values():
        for role, label in zip(SEATED, case.votes, strict=False):
            vote_answers.append(case.vote(api, role, label))
    session.expire_all()
    widened = session.get(Case, cases["three disagreeing votes"].case_id)
    assert widened.reviewers_needed == 5  # the disagreement widened it, and nobody can tell
    same_for_every_case("the votes")

    window = POLICY.review_window + timedelta(seconds=1)
    escalate(opened + window)
    same_for_every_case("the first escalation (two more seats)")
    everyone(lambda c: [c.claim(api, role) for role in [*SEATED[3:5], "outsider"]])
    same_for_every_case("two more claims, and one on a full panel")
    escalate(opened + 2 * window)
    same_for_every_case("the second escalation (the last two seats)")
    everyone(lambda c: [c.claim(api, role) for role in [*SEATED[5:], "outsider"]])
    same_for_every_case("seven seats taken, and a claim on a full panel")
    escalate(opened + 3 * window)
    everyone(lambda c: c.claim(api, "outsider"))
    same_for_every_case("an escalation at the cap of seven seats")

    answers = cases["no vote"].claim_answers
    assert [answers[r][0] for r in SEATED] == [201] * 7 and answers["outsider"][0] == 409
    # A vote's answer is its receipt alone, the same shape whatever the vote did to the panel.
    assert len(vote_answers) == 6
    assert all(answer == vote_answers[0] for answer in vote_answers)
    assert set(vote_answers[0]) == {"case_id", "receipt", "cast_at"}

    # Every case still settles: the seat-holders who have not voted vote, in seat order.
    def settled() -> dict[str, dict[str, Any]]:
        return {m["case_id"]: m for m in to_clinic(session, "case.settled")}

    for case in cases.values():
        for role in SEATED[len(case.votes) :]:
            if case.case_id in settled():
                break
            case.vote(api, role, "tumor")
    reviewers = {name: settled()[case.case_id]["reviewers"] for name, case in cases.items()}
    assert reviewers == {
        "no vote": 3,
        "one vote": 3,
        "two votes": 5,  # 2-1 after the third vote: widened, settled by the fourth and fifth
        "three disagreeing votes": 5,
    }

    # Settlement is what reaches the held streams: seat0 voted on every case, and its stream's
    # history now shows each one.
    def settled_in_history(case: Scenario) -> bool:
        history = case.logs["seat0"].latest("history") or {"settled": []}
        return any(row["case_id"] == case.case_id for row in history["settled"])

    for case in cases.values():
        case.logs["seat0"].wait_for(lambda log, c=case: settled_in_history(c))
        case.close_streams()
