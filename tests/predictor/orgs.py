"""Two organisations in one test process: the clinic (party 0's API) and the marketplace,
each a real app on its own store and port, so either can be stopped and started again."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from aiohttp import web

from infra.messaging import Envelope, new_message_id, public_key, seal
from marketplace.messages import CLINIC, MARKETPLACE, SeatGranted
from marketplace.service import MarketplaceSettings, create_app
from predictor.clinic.store import clinic_sessions
from predictor.images import ImageStore
from predictor.metrics import PatientSideMetrics
from predictor.outcomes import OutcomeWaiters
from predictor.patient_api import create_patient_app
from predictor.settings import PredictorSettings
from tests.predictor.conftest import multipart
from tests.predictor.plaintext import PlaintextQueue


@dataclass
class Organisations:
    tmp: Path
    clinic_key: str
    market_key: str
    clinic_port: int
    market_port: int

    @property
    def clinic_db(self) -> Path:
        return self.tmp / "clinic" / "clinic.sqlite3"

    @property
    def market_db(self) -> Path:
        return self.tmp / "marketplace" / "market.sqlite3"

    @property
    def clinic_url(self) -> str:
        return f"http://127.0.0.1:{self.clinic_port}"

    @property
    def market_url(self) -> str:
        return f"http://127.0.0.1:{self.market_port}"

    def clinic_app(self, **overrides: Any) -> tuple[web.Application, Callable[[], None]]:
        """A fresh clinic (party 0's API) over its store; returns the app and its closer."""
        settings = PredictorSettings(
            clinic_db_url=f"sqlite:///{self.clinic_db}",
            patient_port=self.clinic_port,
            clinic_key=self.clinic_key,
            market_public_key=public_key(self.market_key),
            marketplace_url=self.market_url,
            **overrides,
        )
        sessions = clinic_sessions(settings.clinic_db_url)
        images = ImageStore(self.tmp / "clinic")
        waiters = OutcomeWaiters()
        queue = PlaintextQueue(sessions, images, waiters)
        app = create_patient_app(settings, sessions, images, queue, waiters, PatientSideMetrics())
        return app, queue.close

    def market_app(self) -> web.Application:
        settings = MarketplaceSettings(
            db_url=f"sqlite:///{self.market_db}",
            port=self.market_port,
            patient_base_url=self.clinic_url,
            clinic_public_key=public_key(self.clinic_key),
            signing_key=self.market_key,
        )
        return create_app(settings)

    def market_count(self, sql: str, *args: object) -> int:
        if not self.market_db.exists():
            return 0
        with sqlite3.connect(self.market_db) as db:
            return int(db.execute(sql, args).fetchone()[0])


def eventually(check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def submit(url: str, path: Path) -> dict:
    body, headers = multipart(path.name, path.read_bytes())
    reply = requests.post(f"{url}/image", data=body, headers=headers, timeout=10)
    assert reply.status_code == 202, reply.text
    return reply.json()


def patient_view(url: str, case: dict) -> dict:
    headers = {"Authorization": f"Bearer {case['patient_token']}"}
    return requests.get(f"{url}/case/{case['case_id']}", headers=headers, timeout=10).json()


def seat_message(case_id: str, doctor_id: str, *, key: str, sent_at: float | None = None) -> bytes:
    """A seat.granted envelope as the marketplace (holder of ``key``) would send it."""
    envelope = Envelope(
        message_id=new_message_id(),
        type=SeatGranted.TYPE,
        sender=MARKETPLACE,
        audience=CLINIC,
        sent_at=time.time() if sent_at is None else sent_at,
        body=SeatGranted(case_id, doctor_id, datetime.now(UTC)).body(),
    )
    return seal(envelope, key)


def post_message(clinic_url: str, raw: bytes) -> requests.Response:
    return requests.post(
        f"{clinic_url}/messages", data=raw, headers={"Content-Type": "application/json"}, timeout=10
    )
