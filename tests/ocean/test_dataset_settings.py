"""CSV rendering/validation and settings from env: pure."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pytest

from marketplace.ocean.dataset import COLUMNS, InvalidRow, digest, public_row, render_csv, row_id
from marketplace.ocean.settings import OceanSettings, account, dev_key, settings_from


def test_public_row_drops_row_id_and_formats_dates() -> None:
    raw = {
        "row_id": 7,
        "day": date(2026, 11, 25),
        "backbone": "lenet",
        "model_label": "tumor",
        "confidence_bucket": "0.9-1.0",
        "diagnosis": "tumor",
        "reviewers": 3,
        "agreement": 0.5,
    }
    out = public_row(raw)
    assert list(out) == list(COLUMNS) and out["day"] == "2026-11-25" and "row_id" not in out
    data = render_csv([list(out.values())])
    assert list(csv.reader(io.StringIO(data.decode()))) == [list(COLUMNS), list(out.values())]
    assert digest(data) == digest(render_csv([list(out.values())]))


@pytest.mark.parametrize(
    "raw",
    [
        {"row_id": 1, "day": "d"},
        {"row_id": 1, **dict.fromkeys(COLUMNS, "x"), "diagnosis": None},
        {"row_id": 1, **dict.fromkeys(COLUMNS, "x"), "diagnosis": "a\nb"},
    ],
)
def test_invalid_rows_are_rejected(raw: dict) -> None:
    with pytest.raises(InvalidRow):
        public_row(raw)


@pytest.mark.parametrize("rid", [None, -1, "3", True])
def test_bad_row_ids(rid: object) -> None:
    with pytest.raises(InvalidRow):
        row_id({"row_id": rid})


def test_settings_defaults_are_offline_dev_accounts() -> None:
    s = settings_from(env={})
    assert s.rpc_url.startswith("http://127.0.0.1") and s.k == 5
    assert account(s.publisher_key).address == "0xe2DD09d719Da89e5a3D0F2549c7E24566e947260"
    assert s.provider_key == s.publisher_key and s.researcher_key == dev_key(1)


def test_settings_env_fallbacks() -> None:
    s = settings_from(
        env={
            "CRYPTO_DOCTOR_OCEAN_K": "7",
            "CRYPTO_DOCTOR_OCEAN_RPC_URL": "https://polygon.example/rpc",
            "CRYPTO_DOCTOR_OCEAN_DATA_DIR": "/srv/ocean",
            "CRYPTO_DOCTOR_OCEAN_QUASI_IDENTIFIERS": "day, backbone",
        }
    )
    assert s.k == 7 and s.rpc_url == "https://polygon.example/rpc"
    assert s.data_dir == Path("/srv/ocean") and s.quasi_identifiers == ("day", "backbone")


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        OceanSettings(k=0)
    with pytest.raises(ValueError):
        OceanSettings(price_wei=0)
