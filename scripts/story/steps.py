"""The demo's story, one function per step: each prints its title when it starts, then "ok"
and what it achieved (case ids, bounties, diagnoses, the published digest, the CSV rows)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from predictor.access.client import AccessRefused, fetch_image, load_key
from story.clients import DemoFailed, curl, http, json_or_none, poll, run_cli, run_text
from story.system import System

K = 5  # the Ocean side's default k; the demo does not lower it
CASES = 5


class Clock:
    """Prints numbered steps with the seconds each took and since the start."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.step_start = self.start
        self.n = 0

    def step(self, title: str) -> None:
        self.n += 1
        self.step_start = time.monotonic()
        print(f"\n[{self.n:2d}] {title}", flush=True)

    def done(self, detail: str) -> None:
        now = time.monotonic()
        print(
            f"     ok  {detail}  ({now - self.step_start:.1f} s; {now - self.start:.1f} s total)",
            flush=True,
        )


def say(text: str) -> None:
    print("     " + text, flush=True)


def pick_images(work: Path) -> list[tuple[Path, str]]:
    """Generated slices (the offline MRI generator), alternating tumor / no tumor."""
    from training.synthetic import generate_dataset

    root = generate_dataset(work / "mri", seed=11, train=2, eval=2 * CASES)
    yes = sorted((root / "eval" / "yes").iterdir())
    no = sorted((root / "eval" / "no").iterdir())
    mixed = [p for pair in zip(yes, no, strict=False) for p in pair]
    return [(p, "tumor" if p.parent.name == "yes" else "no_tumor") for p in mixed[:CASES]]


def story(system: System, clock: Clock, keep_images: list[tuple[Path, str]]) -> None:
    """The user flows in order; each step prints its title, then "ok" and what it achieved."""
    wait_until_ready(system, clock)
    doctors = register_doctors(system, clock)
    cases = patients_upload(system, clock, keep_images)
    encrypted_prediction(system, clock, cases)
    bounties_in_pool(system, clock, cases, doctors)
    blind_review(system, clock, cases, doctors)
    settlement(system, clock, cases, doctors)
    patients_read_diagnosis(system, clock, cases)
    published_on_ocean(system, clock)
    researcher_buys(system, clock)
    researcher_downloads(system, clock, cases)


def wait_until_ready(system: System, clock: Clock) -> None:
    clock.step("system ready: two MPC parties, doctor service, chain, Ocean contracts")
    health = poll("party 0 and party 1 (MPC ready)", lambda: _mpc_ready(system), timeout=300)
    poll("the Ocean download service", lambda: json_or_none(system.service_url + "/"), 300)
    poll("Ocean contracts", lambda: (system.ocean_dir / "address.json").exists(), 300)
    clock.done(f"patient API {system.patient_url}, doctors {system.doctor_url}, "
               f"research downloads {system.service_url}, chain {system.rpc_url}; "
               f"model {health['model']['backbone']} {health['model']['sha256'][:12]}")  # fmt: skip


def register_doctors(system: System, clock: Clock) -> list[dict]:
    clock.step(
        "3 doctors registered at the marketplace (reputation 200: all bounty tiers), "
        "each enrolled at the clinic with a key of their own"
    )
    doctors = []
    for n, name in enumerate(
        ("Dr Ada Lovelace", "Dr Santiago Ramon y Cajal", "Dr Rosalind Franklin")
    ):
        created = run_cli(
            ["-m", "marketplace.doctors", "--db-url", system.db_url, "create",
             "--name", name, "--specialty", "neuroradiology", "--reputation", "200"]
        )  # fmt: skip
        key_file = system.work / "doctors" / f"doctor-{n}.key"
        public = run_text(["-m", "predictor.access.client", "keygen", str(key_file)]).strip()
        run_text(
            ["-m", "predictor.access.enrol", "--clinic-db-url", system.clinic_db_url, "add",
             "--doctor-id", created["doctor_id"], "--name", name, "--licence", f"DEMO-{n}",
             "--public-key", public]
        )  # fmt: skip
        doctors.append({"name": name, "key": load_key(key_file), **created})
    clock.done(", ".join(d["name"] for d in doctors))
    return doctors


def patients_upload(system: System, clock: Clock, images: list[tuple[Path, str]]) -> list[dict]:
    clock.step(f"{CASES} patients upload a slice with curl (POST /image)")
    cases = []
    for path, truth in images:
        posted = time.monotonic()
        answer = curl("-F", f"file=@{path}", system.patient_url + "/image")
        cases.append({**answer, "truth": truth, "posted": posted, "file": path.name})
        say(f"{path.name:>12} -> case {answer['case_id'][:8]}…  status {answer['status']}")
    clock.done(f"{len(cases)} cases accepted (202)")
    return cases


def encrypted_prediction(system: System, clock: Clock, cases: list[dict]) -> None:
    clock.step("encrypted prediction (party 0 holds the image, party 1 the model)")
    for case in cases:
        view = poll(
            f"prediction of {case['case_id']}",
            lambda c=case: _patient_view(system, c, key="prediction"),
            timeout=180,
        )
        case["prediction_s"] = time.monotonic() - case["posted"]
        p = view["prediction"]
        say(f"case {case['case_id'][:8]}…  {p['label']:>8} ({p['confidence']:.3f})  "
            f"in {case['prediction_s']:.1f} s after POST  [truth: {case['truth']}]")  # fmt: skip
    clock.done("every case predicted under MPC")


def bounties_in_pool(system: System, clock: Clock, cases: list[dict], doctors: list[dict]) -> None:
    clock.step("bounties: each doctor sees the open cases in the pool")

    def pool_cards() -> dict | None:
        """The pool once every case has reached the marketplace (by the clinic's messages)."""
        status, pool = http("GET", system.doctor_url + "/api/pool", token=doctors[0]["token"])
        if status != 200:
            raise DemoFailed(f"pool: {status} {pool}")
        cards = {c["case_id"]: c for c in pool["cases"]}
        return cards if all(c["case_id"] in cards for c in cases) else None

    cards = poll("every case in the marketplace's pool", pool_cards, timeout=60)
    for case in cases:
        case["bounty"] = cards[case["case_id"]]["bounty"]
        say(f"case {case['case_id'][:8]}…  bounty {case['bounty']} credits")
    say(_model_passport(cards[cases[0]["case_id"]]))
    clock.done(f"{len(cases)} cases, {sum(c['bounty'] for c in cases)} credits in escrow")


def _model_passport(card: dict) -> str:
    """The doctor's link from a case to its model's passport opens the readable passport."""
    link, passport_id = card.get("passport_url"), card.get("passport_id")
    if not link or not passport_id:
        raise DemoFailed(f"the case names no model passport to open: {card}")
    status, page = http("GET", link)
    if status != 200 or passport_id.encode() not in page:
        raise DemoFailed(f"the model passport {link} did not open: {status} {str(page)[:200]}")
    return f"model {card['model_version']}, its passport readable at {link}"


def blind_review(system: System, clock: Clock, cases: list[dict], doctors: list[dict]) -> None:
    clock.step("blind review: claim, fetch the image from the clinic (signed request), sealed vote")
    for case in cases:
        for i, doc in enumerate(doctors):
            receipt = _review(system, case, doc, last=i == len(doctors) - 1)
        say(f"case {case['case_id'][:8]}…  3 sealed votes, last receipt "
            f"{json.dumps(receipt)[:70]}…")  # fmt: skip
    clock.done("votes stayed sealed until the panel was complete")


def _review(system: System, case: dict, doc: dict, last: bool) -> dict:
    """One doctor claims the case, fetches the image at the clinic with a request signed by
    their own key, and votes; returns the receipt."""
    status, card = http(
        "POST", f"{system.doctor_url}/api/cases/{case['case_id']}/claim", {}, doc["token"]
    )
    if status != 201:
        raise DemoFailed(f"claim by {doc['name']}: {status} {card}")
    try:
        image, _ = fetch_image(system.patient_url, case["case_id"], doc["doctor_id"], doc["key"])
    except AccessRefused as exc:
        raise DemoFailed(f"the clinic refused {doc['name']}'s signed image request: {exc}") from exc
    if len(image) < 100:
        raise DemoFailed("the clinic served an empty image")
    if not last:
        view = _case(system, case)
        if view["diagnosis"] is not None:
            raise DemoFailed("a diagnosis appeared before the panel finished")
    case["decided"] = time.monotonic()
    status, receipt = http(
        "POST", system.doctor_url + "/decision",
        {"case_id": case["case_id"], "label": case["truth"], "note": "demo"}, doc["token"],
    )  # fmt: skip
    if status != 201:
        raise DemoFailed(f"decision by {doc['name']}: {status} {receipt}")
    return receipt


def settlement(system: System, clock: Clock, cases: list[dict], doctors: list[dict]) -> None:
    clock.step("settlement: consensus, escrow paid to the agreeing doctors")
    for case in cases:
        view = poll(
            f"settlement of {case['case_id']}",
            lambda c=case: _patient_view(system, c, key="diagnosis"),
            timeout=60,
        )
        case["settle_s"] = time.monotonic() - case["decided"]
        case["diagnosis"] = view["diagnosis"]
    paid = 0
    for doc in doctors:
        status, me = http("GET", system.doctor_url + "/api/me", token=doc["token"])
        if status != 200:
            raise DemoFailed(f"profile: {status} {me}")
        paid += me["balance"]
        say(f"{doc['name']:<26} balance {me['balance']:>6}  reputation {me['reputation']}")
    escrow = sum(c["bounty"] for c in cases)
    if paid != escrow:
        raise DemoFailed(f"doctors were paid {paid} credits, escrow held {escrow}")
    clock.done(f"{len(cases)} cases settled; doctors paid exactly the {escrow} escrowed credits")


def patients_read_diagnosis(system: System, clock: Clock, cases: list[dict]) -> None:
    clock.step("patients read their diagnosis with curl (GET /case/<id>, Bearer token)")
    for case in cases:
        view = _case(system, case)
        d = view["diagnosis"]
        if view["status"] != "settled" or d["label"] != case["truth"]:
            raise DemoFailed(f"unexpected patient view {view}")
        say(f"case {case['case_id'][:8]}…  model {view['prediction']['label']:>8}, doctors "
            f"{d['label']:>8} ({d['reviewers']} reviewers, agreement {d['agreement']})  "
            f"decision->settled {case['settle_s']:.2f} s")  # fmt: skip
    clock.done("every patient has a settled diagnosis")


def published_on_ocean(system: System, clock: Clock) -> None:
    clock.step(f"research rows published on Ocean (k-anonymity k={K}: groups of >= {K})")
    asset = poll(
        "the publisher to put the rows on chain",
        lambda: _published(system, CASES),
        timeout=180,
        interval=1.0,
    )
    clock.done(f"{asset['digest']['rows']} rows; CSV sha256 {asset['digest']['sha256'][:16]}… "
               f"on data NFT {asset['nft']}")  # fmt: skip


def researcher_buys(system: System, clock: Clock) -> None:
    clock.step("researcher CLI buys a datatoken (OCEAN on the fixed-rate exchange) and orders")
    bought = run_cli(["-m", "marketplace.researcher", "buy"], env=system.ocean_env())
    clock.done(f"order {bought['order_tx'][:18]}… paid {bought['paid_ocean_wei'] / 1e18:g} OCEAN")


def researcher_downloads(system: System, clock: Clock, cases: list[dict]) -> None:
    clock.step("researcher CLI downloads the CSV (order verified on chain, digest checked)")
    out = system.work / "crypto-doctor-diagnoses.csv"
    got = run_cli(
        ["-m", "marketplace.researcher", "download", "--out", str(out)], env=system.ocean_env()
    )
    lines = out.read_text().splitlines()
    if got["rows"] != CASES or len(lines) != CASES + 1:
        raise DemoFailed(f"expected {CASES} rows, got {got} / {len(lines) - 1} lines")
    for case in cases:
        if case["case_id"] in out.read_text():
            raise DemoFailed("a case id leaked into the research data")
    say(lines[0])
    for line in lines[1:]:
        say(line)
    clock.done(f"{got['rows']} anonymized rows in {out} (sha256 {got['sha256'][:16]}…)")


def _mpc_ready(system: System) -> dict | None:
    system.alive()
    health = json_or_none(system.patient_url + "/healthz")
    return health if health and health.get("mpc_ready") else None


def _case(system: System, case: dict) -> dict:
    return curl("-H", f"Authorization: Bearer {case['patient_token']}",
                system.patient_url + case["status_url"])  # fmt: skip


def _patient_view(system: System, case: dict, key: str):
    system.alive()
    view = _case(system, case)
    if view["status"] == "failed":
        raise DemoFailed(f"case failed: {view.get('failure_reason')}")
    return view if view[key] is not None else None


def _published(system: System, rows: int):
    system.alive()
    asset = json_or_none(system.service_url + "/asset")
    if asset and asset.get("digest") and asset["digest"]["rows"] >= rows:
        return asset
    return None
