"""The publisher against the marketplace's real database and its `research` functions."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from marketplace.ocean.rows import MarketplaceRowSource
from marketplace.ocean.settings import OceanSettings
from marketplace.ocean.state import OceanState

research = pytest.importorskip("marketplace.research")
from marketplace.storage import make_engine, make_sessionmaker, migrate  # noqa: E402
from marketplace.storage.models import ResearchRow  # noqa: E402

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


def test_publish_cli_publishes_marketplace_rows_k_anonymously(
    settings: OceanSettings, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'marketplace.sqlite3'}"
    migrate(url)
    add_rows(url, [date(2026, 11, 20)] * 3 + [date(2026, 11, 21)] * 2)

    cmd = [
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
    ]
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
    # the Ocean CSV and the marketplace's own CSV rendering are byte-identical
    expected = research.csv_lines(values, header=True)
    assert settings.csv_path.read_text() == expected

    source = MarketplaceRowSource(sessions, clock=lambda: datetime(2026, 11, 25, tzinfo=UTC))
    assert [r["row_id"] for r in source.pending_rows(10)] == [4, 5]
    state = OceanState(settings.state_path)
    assert state.count("committed") == 3
