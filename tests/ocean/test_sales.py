"""The data set's sales on a real local chain become royalties once each, across node restarts."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from ocean_lib.ocean.ocean import Ocean

from infra.net import free_port
from marketplace import ledger, researcher, royalties
from marketplace.domain import royalties as rules
from marketplace.ocean.chain import connect, ocean_config, wallet
from marketplace.ocean.deploy import deploy_contracts, fund_ocean
from marketplace.ocean.node import GanacheNode
from marketplace.ocean.publisher import Publisher
from marketplace.ocean.rows import MarketplaceRowSource
from marketplace.ocean.sales import read_sales
from marketplace.ocean.settings import ONE_TOKEN, OceanSettings, dev_key
from marketplace.ocean.state import OceanState
from marketplace.storage import make_engine, make_sessionmaker, migrate
from marketplace.storage.models import OceanSale, ResearchRow
from tests.ocean.conftest import ServiceThread

pytestmark = pytest.mark.chain
VERSION_A, VERSION_B = "aa" * 32, "bb" * 32


def _settled_rows(sessions, versions: list[str]) -> None:
    """Settled cases' research rows of one k-anonymity group, predicted by ``versions``."""
    with sessions.begin() as session:
        for i, version in enumerate(versions):
            session.add(
                ResearchRow(
                    day=date(2026, 11, 20),
                    backbone="resnet18",
                    model_label=("tumor", "no_tumor")[i % 2],
                    confidence_bucket=("0.8-0.9", "0.9-1.0")[i % 2],
                    diagnosis=("tumor", "no_tumor")[i % 2],
                    reviewers=3,
                    agreement=1.0,
                    unfamiliar=False,
                    model_version=version,
                )
            )


def test_sales_are_read_from_swaps_and_booked_once_across_a_restart(tmp_path: Path) -> None:
    node = GanacheNode(db_path=tmp_path / "db")
    node.start()
    service = None
    db_url = f"sqlite:///{tmp_path / 'market.sqlite3'}"
    migrate(db_url)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        w3 = connect(node.url)
        report = deploy_contracts(w3, wallet(dev_key(0)), tmp_path / "address.json")
        researcher_address = wallet(dev_key(1)).address
        fund_ocean(
            w3, wallet(dev_key(0)), report.addresses["Ocean"], researcher_address, 100 * ONE_TOKEN
        )
        settings = OceanSettings(
            rpc_url=node.url,
            address_file=tmp_path / "address.json",
            data_dir=tmp_path / "ocean",
            k=3,
            service_url=f"http://127.0.0.1:{free_port()}",
        )
        _settled_rows(sessions, [VERSION_A, VERSION_A, VERSION_A, VERSION_B])
        state = OceanState(settings.state_path)
        assert Publisher(settings, MarketplaceRowSource(sessions), state).publish().committed == 4
        service = ServiceThread(settings)
        service.start()

        ocean = Ocean(ocean_config(settings))
        before = ocean.OCEAN.balanceOf(researcher_address)
        purchase = researcher.buy(settings)
        paid = before - ocean.OCEAN.balanceOf(researcher_address)
        asset = state.asset(int(w3.eth.chain_id))
        assert asset is not None

        [sale], next_block = read_sales(w3, asset, 0)
        # The buyer paid price + fees; the publisher's proceeds are the price.
        assert sale.ocean_wei == settings.price_wei < paid == purchase.paid_ocean_wei
        assert next_block == w3.eth.block_number + 1

        scan = [
            "--db-url", db_url,
            "--ocean-rpc-url", node.url,
            "--ocean-data-dir", str(settings.data_dir),
            "--credits-per-ocean", "10",
            "scan-sales",
        ]  # fmt: skip
        assert royalties.main(scan) == 0
        with sessions() as session:
            assert ledger.balance(session, rules.pool_account(VERSION_A)) == 75
            assert ledger.balance(session, rules.pool_account(VERSION_B)) == 25
            assert ledger.balance(session, rules.OCEAN_SALES) == -100
            [booked] = session.query(OceanSale).all()
            assert (booked.rows, booked.credits) == (4, 100)
            assert booked.tx_hash != purchase.order_tx.lower()  # the swap, not the order

        service.stop()
        service = None
        node.stop()
        node.start()  # the same chain resumes: same blocks, same hashes
        w3 = connect(node.url)
        assert royalties.main(scan) == 0  # from its cursor: nothing new
        again, _ = read_sales(w3, asset, 0)  # a full re-scan finds the same sale ...
        assert again == [sale]
        now = datetime.now(UTC)
        with sessions() as session:  # ... and books it no second time
            assert royalties.book_sales(session, again, credits_per_ocean=10, now=now) == []
            assert session.query(OceanSale).count() == 1
            assert ledger.balance(session, rules.OCEAN_SALES) == -100
        state.close()
    finally:
        if service is not None:
            service.stop()
        node.stop()
        engine.dispose()


def test_scan_with_the_chain_down_books_nothing_and_says_so(tmp_path: Path, capsys) -> None:
    db_url = f"sqlite:///{tmp_path / 'market.sqlite3'}"
    code = royalties.main(
        ["--db-url", db_url, "--ocean-rpc-url", f"http://127.0.0.1:{free_port()}", "scan-sales"]
    )
    assert code == 2 and "chain did not answer" in capsys.readouterr().err
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        assert ledger.all_balances(session) == {}
    engine.dispose()
