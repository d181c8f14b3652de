"""The researcher CLI as a newcomer meets it, on a real chain: it says what is wrong in one line,
refuses to spend on an empty release, and finds the project's files from any folder."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ocean_lib.ocean.ocean import Ocean

from marketplace import researcher
from marketplace.ocean.chain import ocean_config
from marketplace.ocean.publisher import Publisher
from marketplace.ocean.settings import OceanSettings, account
from marketplace.ocean.state import OceanState
from tests.ocean.conftest import ListRowSource, research_row

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "marketplace.researcher"]


def publish(settings: OceanSettings, rows: int) -> None:
    source = ListRowSource([research_row(i) for i in range(rows)])
    result = Publisher(settings, source, OceanState(settings.state_path)).publish()
    assert result.csv_rows == rows and not result.chain_down


def clean_env() -> dict[str, str]:
    """The environment without any Ocean setting, as on a newcomer's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CRYPTO_DOCTOR_OCEAN_")}


def spent(settings: OceanSettings) -> tuple[int, int]:
    """The researcher's transaction count and OCEAN balance: any purchase changes both."""
    config = ocean_config(settings)
    me = account(settings.researcher_key).address
    return config["web3_instance"].eth.get_transaction_count(me), Ocean(config).OCEAN.balanceOf(me)


def test_buy_refuses_to_spend_on_a_release_with_no_rows(settings, service, tmp_path) -> None:
    publish(settings, 0)  # the data NFT exists, its digest says 0 rows: every group is held
    before = spent(settings)

    with pytest.raises(researcher.EmptyRelease, match="0 rows"):
        researcher.buy(settings)
    assert spent(settings) == before  # no transaction sent, no OCEAN spent

    cli = subprocess.run(
        [*CLI, "buy", "--rpc-url", settings.rpc_url, "--service-url", settings.service_url,
         "--address-file", str(settings.address_file), "--data-dir", str(tmp_path / "r")],
        env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 1 and cli.stdout == ""
    [line] = cli.stderr.splitlines()
    assert "the release has 0 rows" in line and "groups of 3" in line and "--anyway" in line
    assert spent(settings) == before

    purchase = researcher.buy(settings, anyway=True)
    assert purchase.paid_ocean_wei > 0 and spent(settings) != before


@pytest.mark.slow
def test_missing_address_file_is_one_clear_line(chain, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "address.json"
    order = ["--order-tx", "0x" + "00" * 32]  # so `download` gets as far as the chain
    for command in (["buy"], ["download", *order]):
        run = subprocess.run(
            [*CLI, *command, "--rpc-url", chain.node.url, "--address-file", "nowhere/address.json"],
            env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        [line] = run.stderr.splitlines()  # no traceback, no import-time warnings
        assert f"no Ocean address file at {missing}" in line


def test_default_paths_come_from_the_project_not_the_current_folder(
    settings, service, tmp_path, monkeypatch, capsys
) -> None:
    assert researcher.PROJECT_ROOT == REPO
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = argparse.Namespace(address_file=None, data_dir=None)
    rooted = researcher.researcher_settings(args, env={})
    assert rooted.address_file == REPO / "var" / "ocean" / "address.json"
    assert rooted.data_dir == REPO / "var" / "ocean"
    given = researcher.researcher_settings(
        argparse.Namespace(address_file="a.json", data_dir=None),
        env={"CRYPTO_DOCTOR_OCEAN_DATA_DIR": "d"},
    )
    assert (given.address_file, given.data_dir) == (Path("a.json"), Path("d"))  # as typed

    # A whole purchase from another folder, with the project's var/ocean/address.json.
    project = tmp_path / "project"
    (project / "var" / "ocean").mkdir(parents=True)
    shutil.copy(settings.address_file, project / "var" / "ocean" / "address.json")
    monkeypatch.setattr(researcher, "PROJECT_ROOT", project)
    for name in list(os.environ):
        if name.startswith("CRYPTO_DOCTOR_OCEAN_"):
            monkeypatch.delenv(name)
    publish(settings, 3)
    urls = ["--rpc-url", settings.rpc_url, "--service-url", settings.service_url]

    assert researcher.main(["buy", *urls]) == 0
    [order_file] = (project / "var" / "ocean" / "researcher").iterdir()
    order_tx = json.loads(order_file.read_text())["order_tx"]
    assert json.loads(capsys.readouterr().out)["order_tx"] == order_tx
    assert researcher.main(["download", *urls, "--out", "rows.csv"]) == 0  # the saved order
    assert (elsewhere / "rows.csv").read_bytes() == settings.csv_path.read_bytes()
    assert not (elsewhere / "var").exists()
