"""The users: patients (POST a slice, poll the case), doctors (claim, look, vote), the researcher.

What they saw is recorded in :class:`Stats`, which the audit and the figures read.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from load.system import ROOT, System, get_json
from predictor.access.client import new_key, signed_headers
from predictor.access.protocol import public_key_text


@dataclass
class Stats:
    accepted: dict[str, dict] = field(default_factory=dict)  # case_id -> patient record
    rejected: collections.Counter = field(default_factory=collections.Counter)
    post_retries: int = 0
    votes: int = 0
    vote_errors: collections.Counter = field(default_factory=collections.Counter)
    claim_conflicts: int = 0
    last_vote_sent: dict[str, float] = field(default_factory=dict)  # case -> wall clock
    truth: dict[str, str] = field(default_factory=dict)


def make_images(work: Path, count: int) -> list[tuple[bytes, str, str]]:
    """``count`` distinct generated slices (bytes, filename, truth), from the offline generator."""
    from training.synthetic import generate_dataset

    root = generate_dataset(work / "mri", seed=5, train=2, eval=count)
    images = []
    for label, truth in (("yes", "tumor"), ("no", "no_tumor")):
        for path in sorted((root / "eval" / label).iterdir()):
            images.append((path.read_bytes(), path.name, truth))
    return images


async def patient(
    i: int,
    system: System,
    session: aiohttp.ClientSession,
    image: tuple[bytes, str, str],
    stats: Stats,
    stop_at: float,
) -> None:
    """POST once (retrying only when no answer came back), then poll the case."""
    data, name, truth = image
    answer = None
    while answer is None and time.monotonic() < stop_at:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        posted = time.time()
        try:
            async with session.post(system.patient_url + "/image", data=form) as reply:
                body = await reply.json(content_type=None)
                if reply.status == 202:
                    answer = body
                elif reply.status >= 500:
                    stats.post_retries += 1  # not accepted: nothing to lose, try again
                    await asyncio.sleep(1)
                else:
                    stats.rejected[reply.status] += 1
                    return
        except (TimeoutError, aiohttp.ClientError, ValueError):
            stats.post_retries += 1
            await asyncio.sleep(1)
    if answer is None:
        return
    case_id = answer["case_id"]
    record = {"posted": posted, "token": answer["patient_token"], "truth": truth}
    stats.accepted[case_id] = record
    stats.truth[case_id] = truth
    headers = {"Authorization": f"Bearer {answer['patient_token']}"}
    url = system.patient_url + answer["status_url"]
    while time.monotonic() < stop_at:
        status, view = await get_json(session, url, headers=headers)
        if status == 200 and view:
            if view["prediction"] is not None and "seen_prediction" not in record:
                record["seen_prediction"] = time.time()
            if view["status"] in ("settled", "failed"):
                record["final"] = view
                return
        await asyncio.sleep(2.0 + random.random())


@dataclass(frozen=True)
class Doctor:
    """A doctor as the load test plays them: the marketplace's token, the clinic's enrolled key."""

    token: str
    doctor_id: str
    key: ec.EllipticCurvePrivateKey


async def doctor(
    me: Doctor,
    system: System,
    session: aiohttp.ClientSession,
    stats: Stats,
    rng: random.Random,
    done: Callable[[], bool],
    stop_at: float,
    error_rate: float,
) -> None:
    """Like a doctor on the page: finish my claimed cases first, else pool -> claim; then look
    at the image at the clinic (a request signed with my own key) and cast a sealed vote.
    Until the work runs out."""
    headers = {"Authorization": f"Bearer {me.token}"}
    while time.monotonic() < stop_at and not done():
        try:
            case_id = await next_case(system, session, headers, stats, rng)
            if case_id is None:
                await asyncio.sleep(0.5 + rng.random())
                continue
            await review(system, session, headers, stats, rng, case_id, me, error_rate)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            stats.vote_errors["connection"] += 1  # a party restarting: come back to it later
            await asyncio.sleep(1)


async def next_case(system, session, headers, stats, rng) -> str | None:
    """An unvoted claim of mine (a claim whose answer or vote was lost), else a new claim."""
    status, mine = await get_json(session, system.doctor_url + "/api/claims", headers=headers)
    if status != 200:
        return None
    for card in mine["cases"]:
        if not card["voted"] and card["case_id"] in stats.truth:
            return card["case_id"]
    status, pool = await get_json(session, system.doctor_url + "/api/pool", headers=headers)
    cases = [c for c in (pool or {}).get("cases", []) if c["case_id"] in stats.truth]
    if status != 200 or not cases:
        return None
    case_id = rng.choice(cases[:10])["case_id"]
    url = f"{system.doctor_url}/api/cases/{case_id}/claim"
    async with session.post(url, headers=headers, json={}) as reply:
        await reply.read()
        if reply.status != 201:
            stats.claim_conflicts += 1
            return None
    return case_id


async def review(system, session, headers, stats, rng, case_id, me: Doctor, error_rate) -> None:
    image_url = f"{system.patient_url}/image/{case_id}"
    signed = signed_headers(me.key, case_id, me.doctor_id)
    async with session.get(image_url, headers=signed) as reply:
        await reply.read()
        if reply.status != 200:
            stats.vote_errors[f"image {reply.status}"] += 1
            return
    truth = stats.truth[case_id]
    wrong = "no_tumor" if truth == "tumor" else "tumor"
    label = wrong if rng.random() < error_rate else truth
    sent = time.time()
    async with session.post(
        system.doctor_url + "/decision",
        headers=headers,
        json={"case_id": case_id, "label": label},
    ) as reply:
        await reply.read()
        if reply.status == 201:
            stats.votes += 1
            stats.last_vote_sent[case_id] = max(sent, stats.last_vote_sent.get(case_id, 0.0))
        else:
            stats.vote_errors[reply.status] += 1


def create_doctors(db_url: str, clinic_db_url: str, count: int) -> list[Doctor]:
    """Doctors with reputation 200 (every bounty tier) at the marketplace, each enrolled at
    the clinic with a key of their own: the functions behind ``python -m marketplace.doctors
    create`` and ``python -m predictor.access.enrol add``, without paying 100 start-ups."""
    from marketplace.doctors import create_doctor
    from marketplace.storage import make_engine, make_sessionmaker
    from predictor.access import store
    from predictor.clinic.store import clinic_sessions

    engine = make_engine(db_url)
    made = []
    with make_sessionmaker(engine)() as session, clinic_sessions(clinic_db_url)() as clinic:
        for n in range(count):
            doctor_id, token = create_doctor(
                session,
                display_name=f"Load doctor {n}",
                specialty="neuroradiology",
                reputation=200,
                now=datetime.now(UTC),
            )
            key = new_key()
            store.enrol(
                clinic,
                doctor_id=doctor_id,
                name=f"Load doctor {n}",
                licence=f"LOAD-{n:04d}",
                public_key=public_key_text(key.public_key()),
                now=datetime.now(UTC),
            )
            made.append(Doctor(token, doctor_id, key))
    engine.dispose()
    return made


def researcher_download(system: System) -> dict:
    """The researcher CLI buys and downloads the published file (proves it is sellable)."""
    env = {
        **os.environ,
        "CRYPTO_DOCTOR_OCEAN_RPC_URL": system.rpc_url
        or f"http://127.0.0.1:{system.ports['chain']}",
        "CRYPTO_DOCTOR_OCEAN_SERVICE_URL": system.service_url,
        "CRYPTO_DOCTOR_OCEAN_ADDRESS_FILE": str(system.ocean_dir / "address.json"),
        "CRYPTO_DOCTOR_OCEAN_DATA_DIR": str(system.work / "researcher"),
    }
    out = system.work / "bought.csv"
    for command in (["buy"], ["download", "--out", str(out)]):
        run = subprocess.run(
            [sys.executable, "-m", "marketplace.researcher", *command],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"researcher {command[0]} failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout)
