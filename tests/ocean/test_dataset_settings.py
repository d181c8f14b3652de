"""CSV rendering/validation, and the Ocean processes' settings from flags and env: pure."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pytest

from infra.settings import parse_settings, settings_from, settings_to_argv
from marketplace.ocean.dataset import COLUMNS, InvalidRow, digest, public_row, render_csv, row_id
from marketplace.ocean.deploy import DeploySettings
from marketplace.ocean.node import NodeSettings
from marketplace.ocean.publish import PublishSettings
from marketplace.ocean.serve import ServeSettings
from marketplace.ocean.settings import OceanSettings, account, dev_key


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
        "unfamiliar": "no",
        "model_version": "lenet v1",
    }
    out = public_row(raw)
    assert list(out) == list(COLUMNS) and out["day"] == "2026-11-25" and "row_id" not in out
    data = render_csv([list(out.values())])
    assert list(csv.reader(io.StringIO(data.decode()))) == [list(COLUMNS), list(out.values())]
    assert digest(data) == digest(render_csv([list(out.values())]))


def test_published_bytes_are_pinned() -> None:
    """The bytes (and so the on-chain digests) of files published stay the same.

    Schema 2 (issue 18) added the ``unfamiliar`` column, schema 3 (issue 15) ``model_version``;
    files published under earlier schemas keep their own digests on chain.
    """
    rows = [
        ["2026-11-20", "resnet18", "tumor", "0.8-0.9", "tumor", "3", "0.67", "no", "unknown"],
        ["2026-11-21", "lenet", "no_tumor", "0.9-1.0", "no_tumor", "3", "1.00", "yes", "lenet v2"],
        ["2026-11-21", 'a "quoted", field', "x", "y", "z", "1", "0.50", "no", "lenet v2"],
    ]
    data = render_csv(rows)
    assert data == (
        b"day,backbone,model_label,confidence_bucket,diagnosis,reviewers,agreement,unfamiliar,"
        b"model_version\n"
        b"2026-11-20,resnet18,tumor,0.8-0.9,tumor,3,0.67,no,unknown\n"
        b"2026-11-21,lenet,no_tumor,0.9-1.0,no_tumor,3,1.00,yes,lenet v2\n"
        b'2026-11-21,"a ""quoted"", field",x,y,z,1,0.50,no,lenet v2\n'
    )
    assert digest(data) == "3a813b2aaafe8a65f3b0cc2e7141006116d5343ac5376c6ea7387626b7df252b"
    assert digest(render_csv([])) == (
        "6fff88b5af736f05ef5c09a615a75b615d46d1da1bb1442e5a18f29cba06cb2b"
    )


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
    s = settings_from(OceanSettings, env={})
    assert s.rpc_url.startswith("http://127.0.0.1") and s.k == 5
    assert account(s.publisher_key).address == "0xe2DD09d719Da89e5a3D0F2549c7E24566e947260"
    assert s.provider_key == s.publisher_key and s.researcher_key == dev_key(1)


def test_settings_env_fallbacks() -> None:
    s = settings_from(
        OceanSettings,
        env={
            "CRYPTO_DOCTOR_OCEAN_K": "7",
            "CRYPTO_DOCTOR_OCEAN_RPC_URL": "https://polygon.example/rpc",
            "CRYPTO_DOCTOR_OCEAN_DATA_DIR": "/srv/ocean",
            "CRYPTO_DOCTOR_OCEAN_QUASI_IDENTIFIERS": "day, backbone",
            "CRYPTO_DOCTOR_OCEAN_NETWORK": "polygon",
            "CRYPTO_DOCTOR_DB_URL": "postgresql://db/market",
        },
    )
    assert s.k == 7 and s.rpc_url == "https://polygon.example/rpc"
    assert s.data_dir == Path("/srv/ocean") and s.quasi_identifiers == ("day", "backbone")
    assert s.network_name == "polygon" and s.db_url == "postgresql://db/market"


# What predictor/launcher.py passes to its Ocean children.
SUPERVISOR_FLAGS = [
    "--rpc-url", "http://127.0.0.1:9545",
    "--data-dir", "/srv/ocean",
    "--address-file", "/srv/ocean/address.json",
    "--service-url", "http://127.0.0.1:9082",
    "--db-url", "sqlite:///market.sqlite3",
    "--k", "4",
]  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "own_flags"),
    [
        (PublishSettings, ["--every", "10.0"]),
        (ServeSettings, ["--host", "127.0.0.1", "--port", "9082"]),
        (DeploySettings, []),
        (NodeSettings, ["--port", "9545"]),
    ],
)
def test_every_ocean_process_takes_the_supervisors_flags(cls: type, own_flags: list[str]) -> None:
    settings = parse_settings(cls, own_flags + SUPERVISOR_FLAGS, env={})
    ocean = settings.ocean
    assert (ocean.rpc_url, ocean.data_dir, ocean.address_file) == (
        "http://127.0.0.1:9545",
        Path("/srv/ocean"),
        Path("/srv/ocean/address.json"),
    )
    assert ocean.service_url == "http://127.0.0.1:9082" and ocean.k == 4
    assert ocean.db_url == "sqlite:///market.sqlite3"
    assert parse_settings(cls, settings_to_argv(settings), env={}) == settings


def test_publisher_loop_flags() -> None:
    s = parse_settings(PublishSettings, ["--every", "2.5", "--metrics-port", "9101"], env={})
    assert (s.every, s.limit, s.metrics_port) == (2.5, 10_000, 9101)
    with pytest.raises(SystemExit):
        parse_settings(PublishSettings, ["--metrics-port", "70000"], env={})


@pytest.mark.parametrize("who", ["publisher", "provider", "researcher"])
def test_private_keys_come_from_the_environment_only(who: str) -> None:
    key = dev_key(7)
    with pytest.raises(SystemExit):  # no such flag: a command line is visible in `ps`
        parse_settings(OceanSettings, [f"--{who}-key", key], env={})
    s = parse_settings(OceanSettings, [], env={f"CRYPTO_DOCTOR_OCEAN_{who.upper()}_KEY": key})
    assert getattr(s, f"{who}_key") == key
    assert key not in " ".join(settings_to_argv(s))


def test_settings_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        OceanSettings(k=0)
    with pytest.raises(ValueError):
        OceanSettings(price_wei=0)
