"""One run of the load (or fault) test: flags, the work dir, every user at once, the audit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from load.audit import DEFAULT_K, audit, audit_rows, wait_published
from load.clients import Doctor, Stats, doctor, make_images, patient, researcher_download
from load.report import figures
from load.system import ROOT, System

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--doctors", type=int, default=50)
    parser.add_argument("--distinct-images", type=int, default=24)
    parser.add_argument("--error-rate", type=float, default=0.05, help="share of wrong votes")
    parser.add_argument("--deadline-s", type=float, default=480, help="whole run, wall clock")
    parser.add_argument("--model-path", type=Path, default=ROOT / "models" / "lenet.pth")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--chain-down-s", type=float, default=15, help="fault test only")
    args = parser.parse_args(argv)
    if not 1 <= args.patients <= 1000 or not 1 <= args.doctors <= 200:
        parser.error("bounded: 1-1000 patients, 1-200 doctors")
    return args


def setup_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(asctime)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def prepare(args: argparse.Namespace, prefix: str) -> tuple[Path, list[tuple[bytes, str, str]]]:
    """The work directory (``--work-dir`` or a new temp dir) and the generated slices in it."""
    work = args.work_dir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    log.info("state and logs in %s (shared 2-core machine: figures are noisy)", work)
    return work, make_images(work, max(2, args.distinct_images // 2))


def all_settled(db_url: str, case_ids: set[str]) -> bool:
    from sqlalchemy import func, select

    from marketplace.storage import make_engine
    from marketplace.storage.models import Case

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            open_cases = conn.scalar(
                select(func.count()).where(Case.id.in_(case_ids), Case.status != "settled")
            )
    finally:
        engine.dispose()
    return open_cases == 0


async def run_load(
    system: System,
    images: list[tuple[bytes, str, str]],
    tokens: list[Doctor],
    patients: int,
    stop_at: float,
    error_rate: float,
    during: Callable[[], None] | None = None,
) -> Stats:
    """All patients and doctors at once; returns when every accepted case is settled."""
    stats = Stats()
    rng = random.Random(1)
    finished = {"flag": False}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        patient_tasks = [
            asyncio.create_task(
                patient(i, system, session, images[i % len(images)], stats, stop_at)
            )
            for i in range(patients)
        ]
        doctor_tasks = [
            asyncio.create_task(
                doctor(
                    t,
                    system,
                    session,
                    stats,
                    random.Random(rng.random()),
                    lambda: finished["flag"],
                    stop_at,
                    error_rate,
                )
            )  # fmt: skip
            for t in tokens
        ]
        fault_task = asyncio.create_task(asyncio.to_thread(during)) if during else None
        loop = asyncio.get_running_loop()
        while time.monotonic() < stop_at:
            await asyncio.sleep(2)
            if all(t.done() for t in patient_tasks):
                settled = await loop.run_in_executor(
                    None, all_settled, system.db_url, set(stats.accepted)
                )
                if settled:
                    break
        finished["flag"] = True
        await asyncio.gather(*doctor_tasks, return_exceptions=True)
        for t in patient_tasks:
            t.cancel()
        await asyncio.gather(*patient_tasks, return_exceptions=True)
        if fault_task is not None:
            await fault_task
    return stats


@dataclass(frozen=True)
class Outcome:
    """What one run measured and found."""

    stats: Stats
    load_s: float
    figures: dict
    problems: list[str]
    rows: dict
    bought: dict

    def extra(self, args: argparse.Namespace, **more: object) -> dict:
        """The report's fields beside the figures; ``more`` goes between load_s and rows."""
        return {
            "patients": args.patients,
            "doctors": args.doctors,
            "load_s": round(self.load_s, 1),
            **more,
            "rows": self.rows,
            "researcher_download": self.bought,
        }


def run_and_audit(
    system: System,
    images: list[tuple[bytes, str, str]],
    tokens: list[Doctor],
    args: argparse.Namespace,
    deadline: float,
    during: Callable[[], None] | None = None,
    notes: list[str] | None = None,
) -> Outcome:
    """The load (with ``during`` beside it), the publisher's catch-up, figures, audit, and a
    researcher's purchase when the audit found nothing."""
    load_start = time.monotonic()
    stats = asyncio.run(
        run_load(system, images, tokens, args.patients, deadline - 90, args.error_rate, during)
    )
    load_s = time.monotonic() - load_start
    log.info("load finished in %.1f s; waiting for the publisher", load_s)
    wait_published(system, DEFAULT_K, deadline - 60)
    fig = figures(system, stats)
    problems = audit(system, stats, notes=notes)
    bought = researcher_download(system) if not problems else {}
    return Outcome(stats, load_s, fig, problems, audit_rows(system.db_url), bought)
