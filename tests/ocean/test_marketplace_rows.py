"""The publisher command against the marketplace's real database and its `research` functions."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from infra.net import free_port
from marketplace import research
from marketplace.domain.anonymize import csv_text
from marketplace.ocean.rows import MarketplaceRowSource
from marketplace.ocean.settings import OceanSettings
from marketplace.ocean.state import OceanState
from marketplace.storage import make_engine, make_sessionmaker, migrate
from marketplace.storage.models import ResearchRow

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]


def add_rows(url: str, days: list[date]) -> None:
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as s:
        for d in days:
            s.add(
                ResearchRow(
                    day=d,
                    backbone="resnet18",
                    model_label="tumor",
                    confidence_bucket="0.9-1.0",
                    diagnosis="tumor",
                    reviewers=3,
                    agreement=2 / 3,
                )
            )


def publish_command(settings: OceanSettings, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "marketplace.ocean.publish",
        "--rpc-url",
        settings.rpc_url,
        "--address-file",
        str(settings.address_file),
        "--data-dir",
        str(settings.data_dir),
        "--db-url",
        url,
        "--k",
        str(settings.k),
        *extra,
    ]


def test_publish_cli_publishes_marketplace_rows_k_anonymously(
    settings: OceanSettings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'marketplace.sqlite3'}"
    migrate(url)
    add_rows(url, [date(2026, 11, 20)] * 3 + [date(2026, 11, 21)] * 2)

    cmd = publish_command(settings, url)
    subprocess.run(cmd, check=True, timeout=180, cwd=REPO, capture_output=True)

    sessions = make_sessionmaker(make_engine(url))
    with sessions() as s:
        rows = list(s.scalars(select(ResearchRow).order_by(ResearchRow.id)))
        published = [r for r in rows if r.published_at is not None]
        assert [r.day.day for r in published] == [20, 20, 20]
        assert all(r.published_ref and r.published_ref.startswith("0x") for r in published)
        assert [r.published_at for r in rows[3:]] == [None, None]  # held back: group of 2 < k
        published_ids = {r.id for r in published}
        values = [v for rid, v in research.rows_after(s, 0) if rid in published_ids]
    # the Ocean CSV is the marketplace's own rows in the one research-CSV dialect
    assert settings.csv_path.read_text() == csv_text(values, header=True)

    source = MarketplaceRowSource(sessions, clock=lambda: datetime(2026, 11, 25, tzinfo=UTC))
    assert [r["row_id"] for r in source.pending_rows(10)] == [4, 5]
    state = OceanState(settings.state_path)
    assert state.count("committed") == 3


def scrape(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The named samples of a Prometheus text page, or {} while it does not answer yet."""
    try:
        text = requests.get(url, timeout=5).text
    except requests.ConnectionError:
        return {}
    lines = (line.split(" ") for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in lines if name in names}


def test_publisher_counts_its_runs_on_a_loopback_metrics_port(
    settings: OceanSettings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'marketplace.sqlite3'}"
    migrate(url)
    add_rows(url, [date(2026, 11, 20)] * 3)
    port = free_port()
    cmd = publish_command(settings, url, "--every", "0.2", "--metrics-port", str(port))
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    names = (
        "ocean_publish_runs_total",
        "ocean_publish_rows_committed_total",
        "ocean_publish_chain_down_runs_total",
    )
    try:
        deadline = time.monotonic() + 120
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and seen.get(names[0], 0) < 2:
            seen = scrape(f"http://127.0.0.1:{port}/metrics", names)
            time.sleep(0.2)
        assert seen.get(names[0], 0) >= 2, seen  # two runs: the second found nothing new
        assert seen[names[1]] == 3 and seen[names[2]] == 0
    finally:
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr.decode()[-2000:]
