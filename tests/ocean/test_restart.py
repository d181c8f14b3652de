"""Chain outages while publishing: rows queue, are retried, and end up in the CSV exactly once."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from ocean_lib.models.data_nft import DataNFT
from prometheus_client import generate_latest

from infra.net import free_port
from marketplace.ocean.asset import DIGEST_KEY, AssetChain, Digest
from marketplace.ocean.chain import connect, ocean_config, wallet
from marketplace.ocean.dataset import COLUMNS, digest, public_row, render_csv
from marketplace.ocean.deploy import deploy_contracts
from marketplace.ocean.node import GanacheNode
from marketplace.ocean.publish import PublishMetrics
from marketplace.ocean.publisher import Publisher
from marketplace.ocean.settings import OceanSettings, dev_key
from marketplace.ocean.state import COMMITTED, STAGED, OceanState
from tests.ocean.conftest import ListRowSource, distinct_rows, research_row

pytestmark = pytest.mark.chain


class ChainDiesAfterFetch:
    """Real marketplace-side behaviour, real outage: the node is stopped right after the rows
    were fetched, i.e. in the middle of a publish run."""

    def __init__(self, inner: ListRowSource, node: GanacheNode) -> None:
        self.inner, self.node = inner, node

    def pending_rows(self, limit: int) -> list[dict[str, object]]:
        rows = self.inner.pending_rows(limit)
        self.node.stop()
        return rows

    def mark_published(self, row_ids: list[int], ref: str) -> None:
        self.inner.mark_published(row_ids, ref)


def csv_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))[1:]


def test_chain_restart_mid_publish_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    node = GanacheNode(db_path=tmp_path / "db")
    node.start()
    try:
        deploy_contracts(connect(node.url), wallet(dev_key(0)), tmp_path / "address.json")
        settings = OceanSettings(
            rpc_url=node.url, address_file=tmp_path / "address.json", data_dir=tmp_path / "o", k=3
        )
        state = OceanState(settings.state_path)
        source = ListRowSource(distinct_rows(range(3)))
        assert Publisher(settings, source, state).publish().committed == 3

        source.rows += distinct_rows(range(3, 6))
        down = Publisher(settings, ChainDiesAfterFetch(source, node), state).publish()
        assert down.chain_down and down.released == 3 and down.committed == 0
        assert len(csv_rows(settings.csv_path)) == 3  # the published file did not change
        assert sorted(r["row_id"] for r in source.pending_rows(100)) == [3, 4, 5]

        retry_while_down = Publisher(settings, source, state).publish()
        assert retry_while_down.chain_down and retry_while_down.released == 0
        assert state.count(STAGED) == 3

        node.start()  # same port, same database: the chain resumes where it stopped
        up = Publisher(settings, source, state).publish()
        assert not up.chain_down and up.committed == 3 and up.csv_rows == 6

        published = csv_rows(settings.csv_path)
        assert sorted(published) == sorted([r[c] for c in COLUMNS] for r in source.rows)
        assert state.count(COMMITTED) == 6 and state.count(STAGED) == 0
        assert sorted(source.marked) == [0, 1, 2, 3, 4, 5] and source.pending_rows(100) == []
        nft = DataNFT(ocean_config(settings), state.asset(8996).nft)
        on_chain = json.loads(nft.get_data(DIGEST_KEY))
        assert on_chain == {"sha256": digest(settings.csv_path.read_bytes()), "rows": 6}
    finally:
        node.stop()


@pytest.mark.slow
def test_fresh_chain_gets_the_whole_dataset_on_a_new_nft(tmp_path: Path) -> None:
    """A development chain started without its database: the publisher's state names an NFT
    that no longer exists, so the asset is recreated and the full CSV digest set on it."""
    for round_ in ("first", "fresh"):
        node = GanacheNode(db_path=tmp_path / f"db-{round_}")
        node.start()
        try:
            deploy_contracts(connect(node.url), wallet(dev_key(0)), tmp_path / f"{round_}.json")
            settings = OceanSettings(
                rpc_url=node.url,
                address_file=tmp_path / f"{round_}.json",
                data_dir=tmp_path / "o",
                k=3,
            )
            state = OceanState(settings.state_path)
            source = ListRowSource([research_row(i) for i in range(3)])
            if round_ == "first":
                assert Publisher(settings, source, state).publish().csv_rows == 3
                continue
            result = Publisher(settings, source, state).publish()
            assert not result.chain_down and result.csv_rows == 3
            assert "create NFT+datatoken+exchange" in [g.step for g in result.gas]
            nft = state.asset(8996).nft
            on_chain = json.loads(DataNFT(ocean_config(settings), nft).get_data(DIGEST_KEY))
            assert on_chain == {"sha256": digest(settings.csv_path.read_bytes()), "rows": 3}
        finally:
            node.stop()


def test_digest_already_on_chain_is_not_sent_twice(settings: OceanSettings) -> None:
    """A crash after the digest transaction but before the local commit: the rerun finds the
    digest on chain, commits locally without a second transaction, and marks the rows."""
    state = OceanState(settings.state_path)
    source = ListRowSource([research_row(i) for i in range(3)])
    Publisher(settings, ListRowSource(), state).publish()  # asset exists, empty CSV on chain
    state.stage([(int(r["row_id"]), list(public_row(r).values())) for r in source.rows])
    staged_csv = render_csv(r.fields for r in state.all_rows())
    chain = AssetChain(settings)
    chain.set_digest(state.asset(chain.chain_id), Digest(digest(staged_csv), 3))  # "crashed" run

    rerun = Publisher(settings, source, state).publish()

    assert rerun.gas == () and rerun.committed == 3 and rerun.csv_rows == 3
    assert settings.csv_path.read_bytes() == staged_csv
    assert sorted(source.marked) == [0, 1, 2]


def test_runs_against_a_dead_chain_are_counted_as_chain_down(tmp_path: Path) -> None:
    settings = OceanSettings(
        rpc_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        address_file=tmp_path / "address.json",
        data_dir=tmp_path / "o",
        k=3,
    )
    source = ListRowSource(distinct_rows(range(3)))
    publisher = Publisher(settings, source, OceanState(settings.state_path))
    metrics = PublishMetrics()
    for _ in range(2):
        metrics.record(publisher.publish())

    text = generate_latest(metrics.registry).decode().splitlines()
    assert "ocean_publish_runs_total 2.0" in text
    assert "ocean_publish_chain_down_runs_total 2.0" in text
    assert "ocean_publish_rows_committed_total 0.0" in text
    assert source.marked == {} and not settings.csv_path.exists()
