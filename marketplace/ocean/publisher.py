"""Turn settled-case rows into the published CSV, with its digest on the data NFT.

Idempotent per case and safe against chain outages:
1. pending rows come from a RowSource (the marketplace DB); rows already known locally are never
   added twice;
2. rows of groups with >= k pending rows are *staged* (sorted by content) in the publisher's
   SQLite state, others wait in the marketplace DB (not marked) until their group has k rows;
3. the CSV of committed + staged rows is hashed and the digest set on chain; only then are the
   rows *committed*, the CSV file replaced atomically, and the rows marked published upstream.
If the chain is down at step 3 the staged rows stay staged and the next run retries; if the
digest already matches (a crash after the transaction) no second transaction is sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from marketplace.ocean import kanon
from marketplace.ocean.asset import AssetChain, Digest
from marketplace.ocean.chain import ChainUnavailable, GasRecord
from marketplace.ocean.dataset import COLUMNS, InvalidRow, digest, public_row, render_csv, row_id
from marketplace.ocean.settings import OceanSettings
from marketplace.ocean.state import COMMITTED, STAGED, Asset, OceanState

log = logging.getLogger(__name__)


class RowSource(Protocol):
    """What the publisher needs from the marketplace: pending rows in, published marks out."""

    def pending_rows(self, limit: int) -> list[dict[str, object]]: ...

    def mark_published(self, row_ids: list[int], ref: str) -> None: ...


@dataclass(frozen=True)
class Commit:
    """What the commit step of a run did (empty when the chain was down)."""

    committed: int = 0  # rows whose digest went on chain this run
    csv_rows: int = 0  # rows in the published CSV after this run
    sha256: str = ""
    ref: str | None = None
    gas: tuple[GasRecord, ...] = ()


@dataclass(frozen=True)
class PublishResult:
    """Outcome of one publish run (also carries the gas figures for the closing note)."""

    released: int  # new rows staged this run
    held: int  # rows waiting for their k-anonymity group
    committed: int  # rows whose digest went on chain this run
    csv_rows: int  # rows in the published CSV after this run (0 when the chain was down)
    sha256: str
    ref: str | None
    chain_down: bool
    invalid: tuple[int, ...]
    gas: tuple[GasRecord, ...]


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Publisher:
    """Publishes pending rows; one instance per process, runs are serialised by the caller."""

    def __init__(
        self,
        settings: OceanSettings,
        source: RowSource,
        state: OceanState,
        chain_factory: Callable[[OceanSettings], AssetChain] = AssetChain,
    ) -> None:
        self.settings = settings
        self.source = source
        self.state = state
        self.chain_factory = chain_factory
        self.chain_down = False  # the last run found the chain down: warn once per outage

    def ensure_asset(self, chain: AssetChain, gas: list[GasRecord]) -> Asset:
        """Create the data NFT/datatoken/exchange and its metadata once per chain."""
        asset = self.state.asset(chain.chain_id)
        if asset is not None and not chain.exists(asset):
            # A development chain started afresh: publish everything again on a new data NFT.
            log.warning(
                "data NFT %s has no code on chain %s: recreating", asset.nft, asset.chain_id
            )
            asset = None
        if asset is None:
            asset, rec = chain.create()
            gas.append(rec)
            self.state.save_asset(asset)
        if not asset.metadata_set:
            gas.append(chain.set_metadata(asset))
            asset = replace(asset, metadata_set=True)
            self.state.save_asset(asset)
        return asset

    def publish(self, limit: int = 1000) -> PublishResult:
        """One run: stage what k-anonymity allows, commit it on chain, mark it upstream."""
        invalid: list[int] = []
        valid: list[tuple[int, dict[str, str]]] = []
        for raw in self.source.pending_rows(limit):
            try:
                valid.append((row_id(raw), public_row(raw)))
            except InvalidRow as exc:
                log.warning("skipping invalid row (left unpublished): %s", exc)
                rid = raw.get("row_id")
                if isinstance(rid, int):
                    invalid.append(rid)
        known = self.state.known_row_ids([rid for rid, _ in valid])
        fresh = [(rid, fields) for rid, fields in valid if rid not in known]
        # committed locally but not yet marked upstream (a crash or DB error after the commit)
        resync = [rid for rid, _ in valid if known.get(rid) == COMMITTED]

        split = kanon.split_releasable(
            [dict(f, row_id=str(rid)) for rid, f in fresh],
            self.settings.k,
            self.settings.quasi_identifiers,
        )
        # Within a release, order by content: a row's position must not reveal arrival order.
        split.release.sort(key=lambda r: [r[c] for c in COLUMNS])
        self.state.stage([(int(r["row_id"]), [r[c] for c in COLUMNS]) for r in split.release])

        chain_down = False
        try:
            commit = self._commit()
        except ChainUnavailable as exc:
            chain_down, commit = True, Commit()
            if not self.chain_down:
                log.warning(
                    "chain unavailable, %d rows stay queued until it answers: %s",
                    self.state.count(STAGED),
                    exc,
                )
        if self.chain_down and not chain_down:
            log.info("chain answers again: %d queued rows committed", commit.committed)
        self.chain_down = chain_down
        if resync:
            refs = {r.row_id: r.ref or "" for r in self.state.all_rows([COMMITTED])}
            by_ref: dict[str, list[int]] = {}
            for rid in resync:
                by_ref.setdefault(refs.get(rid, ""), []).append(rid)
            for ref, ids in by_ref.items():
                self._mark(ids, ref)
        return PublishResult(
            released=len(split.release),
            held=len(split.hold),
            committed=commit.committed,
            csv_rows=commit.csv_rows,
            sha256=commit.sha256,
            ref=commit.ref,
            chain_down=chain_down,
            invalid=tuple(invalid),
            gas=commit.gas,
        )

    def _commit(self) -> Commit:
        """Put the digest of committed + staged rows on chain, then commit them and the file."""
        rows = self.state.all_rows()
        staged = [r for r in rows if r.status == STAGED]
        data = render_csv(r.fields for r in rows)
        wanted = Digest(sha256=digest(data), rows=len(rows))
        gas: list[GasRecord] = []
        chain = self.chain_factory(self.settings)
        asset = self.ensure_asset(chain, gas)
        on_chain = chain.digest(asset)
        ref = None
        if staged or on_chain is None:
            if on_chain != wanted:
                rec = chain.set_digest(asset, wanted)
                gas.append(rec)
                ref = rec.tx_hash
            else:
                ref = "digest-already-on-chain:" + wanted.sha256[:16]
            self.state.commit_staged([r.seq for r in staged], ref)
        write_atomic(self.settings.csv_path, data)
        if staged:
            self._mark([r.row_id for r in staged], ref or "")
        return Commit(len(staged), len(rows), wanted.sha256, ref, tuple(gas))

    def _mark(self, row_ids: list[int], ref: str) -> None:
        """Tell the marketplace; a failure here is retried next run (rows come back pending)."""
        try:
            self.source.mark_published(sorted(set(row_ids)), ref=ref)
        except Exception:  # noqa: BLE001 - any storage error: the resync path retries
            log.exception("marking %d rows published failed; will retry", len(row_ids))
