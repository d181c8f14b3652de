"""End to end on a real chain: publish, buy with a second account, download; and the refusals."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from ocean_lib.models.data_nft import DataNFT
from ocean_lib.ocean.ocean import Ocean

from marketplace import researcher
from marketplace.ocean.asset import DIGEST_KEY
from marketplace.ocean.chain import ocean_config
from marketplace.ocean.dataset import COLUMNS, digest
from marketplace.ocean.orders import sign_download
from marketplace.ocean.publisher import Publisher
from marketplace.ocean.settings import OceanSettings, account, dev_key
from marketplace.ocean.state import OceanState
from tests.ocean.conftest import ListRowSource, research_row

pytestmark = pytest.mark.chain
REPO = Path(__file__).resolve().parents[2]


def publish_rows(settings: OceanSettings, n: int) -> ListRowSource:
    source = ListRowSource([research_row(i) for i in range(n)])
    result = Publisher(settings, source, OceanState(settings.state_path)).publish()
    assert result.committed == n and not result.chain_down
    return source


def post_download(settings: OceanSettings, body: object) -> requests.Response:
    return requests.post(settings.service_url + "/download", json=body, timeout=30)


def asset(settings: OceanSettings) -> dict:
    return requests.get(settings.service_url + "/asset", timeout=30).json()


def test_buy_and_download_gives_the_published_csv(settings, service, tmp_path) -> None:
    publish_rows(settings, 4)
    info = asset(settings)
    ocean = Ocean(ocean_config(settings))  # ocean-lib's entry point works against our chain
    publisher = account(settings.publisher_key).address
    dt = ocean.get_datatoken(info["datatoken"])
    publisher_dt_before = dt.balanceOf(publisher)

    purchase = researcher.buy(settings)
    assert purchase.paid_ocean_wei > settings.price_wei  # price + exchange fees
    assert dt.balanceOf(publisher) > publisher_dt_before  # the order paid the publisher
    assert dt.balanceOf(account(settings.researcher_key).address) == 0

    got = researcher.download(settings, purchase.order_tx, tmp_path / "out.csv")

    data = (tmp_path / "out.csv").read_bytes()
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[0] == list(COLUMNS) and len(rows) == 5
    on_chain = json.loads(DataNFT(ocean_config(settings), info["nft"]).get_data(DIGEST_KEY))
    assert on_chain == {"sha256": digest(data), "rows": 4} and got.rows == 4

    again = post_download(
        settings,
        {
            "order_tx": purchase.order_tx,
            "signature": sign_download(settings.researcher_key, purchase.order_tx, dt.address),
        },
    )
    assert again.status_code == 403 and again.json()["error"] == "order_reused"

    metrics = requests.get(settings.service_url + "/metrics", timeout=30).text
    assert "ocean_downloads_total 1.0" in metrics.splitlines()
    assert 'ocean_orders_refused_total{reason="order_reused"} 1.0' in metrics.splitlines()


def test_forged_foreign_and_unsigned_orders_get_no_data(settings, service) -> None:
    publish_rows(settings, 3)
    purchase = researcher.buy(settings)
    datatoken = asset(settings)["datatoken"]
    w3 = ocean_config(settings)["web3_instance"]
    buy_tx = next(  # a real transaction of the buyer that is not an order: the datatoken swap
        tx["hash"].hex()
        for tx in w3.eth.get_block(w3.eth.block_number - 1, full_transactions=True)["transactions"]
    )

    cases = {
        "unsigned": ({"order_tx": purchase.order_tx}, 401, "unsigned"),
        "forged hash": (
            {
                "order_tx": "0x" + "ab" * 32,
                "signature": sign_download(settings.researcher_key, "0x" + "ab" * 32, datatoken),
            },
            403,
            "order_not_found",
        ),
        "not an order": (
            {
                "order_tx": buy_tx,
                "signature": sign_download(settings.researcher_key, buy_tx, datatoken),
            },
            403,
            "wrong_datatoken",
        ),
        "another account": (
            {
                "order_tx": purchase.order_tx,
                "signature": sign_download(dev_key(2), purchase.order_tx, datatoken),
            },
            403,
            "not_your_order",
        ),
        "garbage": ({"order_tx": "nope", "signature": "0x00"}, 400, "bad_order_tx"),
    }
    for name, (body, status, code) in cases.items():
        reply = post_download(settings, body)
        assert (reply.status_code, reply.json()["error"]) == (status, code), name
        assert "detail" in reply.json() and "resnet18" not in reply.text

    # none of the refusals consumed the order: its owner still gets the file, once
    ok = post_download(
        settings,
        {
            "order_tx": purchase.order_tx,
            "signature": sign_download(settings.researcher_key, purchase.order_tx, datatoken),
        },
    )
    assert ok.status_code == 200 and ok.content == settings.csv_path.read_bytes()


def test_expired_order_is_refused(settings, service) -> None:
    publish_rows(settings, 3)
    purchase = researcher.buy(settings)
    datatoken = asset(settings)["datatoken"]
    w3 = ocean_config(settings)["web3_instance"]
    w3.provider.make_request("evm_increaseTime", [settings.order_timeout_s + 60])
    w3.provider.make_request("evm_mine", [])

    reply = post_download(
        settings,
        {
            "order_tx": purchase.order_tx,
            "signature": sign_download(settings.researcher_key, purchase.order_tx, datatoken),
        },
    )
    assert reply.status_code == 403 and reply.json()["error"] == "order_expired"


@pytest.mark.slow
def test_researcher_cli_buys_and_downloads_with_its_own_key(settings, service, tmp_path) -> None:
    publish_rows(settings, 3)
    env = dict(
        os.environ,
        CRYPTO_DOCTOR_OCEAN_RESEARCHER_KEY=dev_key(2),  # a second researcher account
        CRYPTO_DOCTOR_OCEAN_RPC_URL=settings.rpc_url,
        CRYPTO_DOCTOR_OCEAN_ADDRESS_FILE=str(settings.address_file),
        CRYPTO_DOCTOR_OCEAN_DATA_DIR=str(settings.data_dir),
        CRYPTO_DOCTOR_OCEAN_SERVICE_URL=settings.service_url,
    )
    cli = [sys.executable, "-m", "marketplace.researcher"]
    bought = subprocess.run(
        cli + ["buy"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert bought.returncode == 0, bought.stderr
    assert json.loads(bought.stdout)["consumer"] == account(dev_key(2)).address

    out = tmp_path / "b.csv"
    got = subprocess.run(
        cli + ["download", "--out", str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["rows"] == 3
    assert out.read_bytes() == settings.csv_path.read_bytes()

    again = subprocess.run(
        cli + ["download", "--out", str(tmp_path / "c.csv")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and "order_reused" in again.stderr
    assert not (tmp_path / "c.csv").exists()


def test_order_not_initialized_by_this_service_is_refused(settings, service) -> None:
    """A real, paid order whose provider fee the buyer signed itself (bypassing /initialize)."""
    from hexbytes import HexBytes
    from ocean_lib.models.fixed_rate_exchange import OneExchange

    from marketplace.ocean.orders import provider_fee
    from marketplace.ocean.settings import ONE_TOKEN

    publish_rows(settings, 3)
    info = asset(settings)
    ocean = Ocean(ocean_config(settings))
    me = account(settings.researcher_key)
    exchange = OneExchange(ocean.fixed_rate_exchange, HexBytes(info["exchange_id"]))
    needed = exchange.BT_needed(ONE_TOKEN, 0)
    ocean.OCEAN.approve(exchange.address, needed, {"from": me})
    exchange.buy_DT(ONE_TOKEN, {"from": me}, max_basetoken_amt=needed)
    w3 = ocean.config["web3_instance"]
    fee = provider_fee(
        settings.researcher_key,
        ocean.OCEAN_address,
        w3.eth.get_block("latest")["timestamp"] + 600,
        {},
    )
    dt = ocean.get_datatoken(info["datatoken"])
    order_tx = HexBytes(dt.start_order(me.address, 0, fee, {"from": me})["transactionHash"]).hex()

    reply = post_download(
        settings,
        {
            "order_tx": order_tx,
            "signature": sign_download(settings.researcher_key, order_tx, dt.address),
        },
    )
    assert (reply.status_code, reply.json()["error"]) == (403, "foreign_provider")


def test_file_out_of_step_with_the_chain_is_not_sold_and_order_survives(settings, service) -> None:
    """Between the digest transaction and the file write (or after tampering) the service
    refuses with 503 without consuming the order; once the file matches, the order works."""
    publish_rows(settings, 3)
    purchase = researcher.buy(settings)
    body = {
        "order_tx": purchase.order_tx,
        "signature": sign_download(settings.researcher_key, purchase.order_tx, purchase.datatoken),
    }
    good = settings.csv_path.read_bytes()
    settings.csv_path.write_bytes(good + b"1999-01-01,x,x,x,x,1,1.00\n")

    reply = post_download(settings, body)
    assert (reply.status_code, reply.json()["error"]) == (503, "dataset_updating")

    settings.csv_path.write_bytes(good)
    ok = post_download(settings, body)
    assert ok.status_code == 200 and ok.content == good
