"""Deployment idempotency, the deploy command, and k-anonymous publishing on a real chain."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from ocean_lib.models.data_nft import DataNFT
from ocean_lib.models.datatoken_base import DatatokenBase
from ocean_lib.ocean.ocean import Ocean

from marketplace.ocean.asset import DATASET_NAME, DIGEST_KEY
from marketplace.ocean.chain import connect, ocean_config, wallet
from marketplace.ocean.dataset import digest
from marketplace.ocean.deploy import deploy_contracts, read_addresses
from marketplace.ocean.publisher import Publisher
from marketplace.ocean.settings import ONE_TOKEN, OceanSettings, account, dev_key
from marketplace.ocean.state import OceanState
from tests.ocean.conftest import Chain, ListRowSource, research_row

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]


def test_address_file_is_what_ocean_lib_reads(
    chain: Chain, settings: OceanSettings, service
) -> None:
    entry = read_addresses(chain.address_file, "development")
    assert entry is not None and entry["chainId"] == 8996
    assert set(entry) >= {
        "Ocean",
        "Router",
        "FixedPrice",
        "Dispenser",
        "ERC721Factory",
        "ERC721Template",
        "ERC20Template",
        "OPFCommunityFeeCollector",
    }
    ocean = Ocean(ocean_config(settings))
    assert ocean.OCEAN_address == entry["Ocean"]
    assert ocean.data_nft_factory.getTokenTemplate(2)[0] == entry["ERC20Template"]["2"]
    assert ocean.factory_router.isFixedRateContract(entry["FixedPrice"])
    assert ocean.factory_router.isDispenserContract(entry["Dispenser"])


def test_deploy_is_idempotent_and_the_command_reports_it(
    chain: Chain, settings: OceanSettings
) -> None:
    again = deploy_contracts(connect(chain.node.url), wallet(dev_key(0)), chain.address_file)
    assert not again.deployed and again.addresses == chain.deploy.addresses and again.gas == ()

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketplace.ocean.deploy",
            "--rpc-url",
            chain.node.url,
            "--address-file",
            str(chain.address_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    summary = json.loads(out.stdout)
    assert summary["deployed"] is False and summary["addresses"] == chain.deploy.addresses
    # nothing deployed; at most the dev researcher was topped up to 1000 mock OCEAN
    assert {t["step"] for t in summary["transactions"]} <= {"OceanToken.transfer"}
    mock_ocean = DatatokenBase.get_typed(ocean_config(settings), summary["addresses"]["Ocean"])
    assert mock_ocean.balanceOf(account(dev_key(1)).address) >= 1000 * ONE_TOKEN


def test_deploy_redeploys_when_addresses_point_nowhere(chain: Chain, tmp_path: Path) -> None:
    stale = tmp_path / "address.json"
    entry = dict(chain.deploy.addresses, Ocean="0x" + "11" * 20)
    stale.write_text(json.dumps({"development": entry, "mainnet": {"Ocean": "0x" + "22" * 20}}))
    report = deploy_contracts(connect(chain.node.url), wallet(dev_key(0)), stale)
    assert report.deployed and report.addresses["Ocean"] != entry["Ocean"]
    written = json.loads(stale.read_text())
    assert written["mainnet"] == {"Ocean": "0x" + "22" * 20}  # other networks kept
    assert written["development"] == report.addresses


def test_rows_are_held_back_until_their_group_reaches_k(settings: OceanSettings) -> None:
    state = OceanState(settings.state_path)
    source = ListRowSource(
        [research_row(i, day=date(2026, 11, 20)) for i in range(2)]
        + [research_row(i, day=date(2026, 11, 21)) for i in range(2, 5)]
    )
    first = Publisher(settings, source, state).publish()
    assert (first.released, first.held, first.csv_rows) == (3, 2, 3)
    assert sorted(r["row_id"] for r in source.pending_rows(100)) == [0, 1]
    assert "2026-11-20" not in settings.csv_path.read_text()

    source.rows.append(research_row(5, day=date(2026, 11, 20)))
    second = Publisher(settings, source, state).publish()
    assert (second.released, second.held, second.csv_rows) == (3, 0, 6)
    assert source.pending_rows(100) == []

    nft = DataNFT(ocean_config(settings), state.asset(8996).nft)
    assert nft.name() == DATASET_NAME and nft.getMetaData()[3]  # metadata (DDO) is set
    assert json.loads(nft.get_data(DIGEST_KEY)) == {
        "sha256": digest(settings.csv_path.read_bytes()),
        "rows": 6,
    }

    third = Publisher(settings, source, state).publish()  # nothing new: no transaction
    assert third.gas == () and third.csv_rows == 6


def test_invalid_rows_are_skipped_and_left_pending(settings: OceanSettings) -> None:
    bad = research_row(9)
    del bad["diagnosis"]
    arrivals = [0.95, 0.55, 0.75]  # arrival order must not survive in the file
    source = ListRowSource([bad] + [research_row(i, confidence=c) for i, c in enumerate(arrivals)])
    result = Publisher(settings, source, OceanState(settings.state_path)).publish()
    assert result.invalid == (9,) and result.csv_rows == 3
    assert [r["row_id"] for r in source.pending_rows(10)] == [9]
    lines = settings.csv_path.read_text().splitlines()[1:]
    assert [line.split(",")[3] for line in lines] == ["0.5-0.6", "0.7-0.8", "0.9-1.0"]
