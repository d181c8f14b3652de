"""Publisher-local state in its own SQLite file under the data dir (adapter).

It is the single source of truth for what the CSV contains, which rows still wait for their
on-chain commit, which asset (data NFT, datatoken, exchange) belongs to this publisher, and which
orders have already been redeemed for a download. It is separate from the marketplace's Alembic-
managed database on purpose: it belongs to the Ocean publisher and survives chain outages.

Why `create_all` and no Alembic history: this is the publisher's private local file, not the
marketplace database (no other process reads it, no operator migrates it, it is never on
PostgreSQL), and its schema has only ever gained whole tables, which `create_all` adds to an
existing file. The trust-boundary issue gives each organisation its own store; the first change
to an existing column here is the moment to give this file its own Alembic history (stamping
files made by `create_all` as its first revision), not before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import ForeignKey, String, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

STAGED = "staged"
COMMITTED = "committed"


class Base(DeclarativeBase):
    pass


class PublishedRow(Base):
    """One research row, in CSV order (`seq`), staged until its digest is on chain."""

    __tablename__ = "ocean_row"
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    row_id: Mapped[int] = mapped_column(unique=True)
    fields_json: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String(16), index=True)
    ref: Mapped[str | None] = mapped_column(String(80), default=None)

    @property
    def fields(self) -> list[str]:
        return list(json.loads(self.fields_json))


class AssetRecord(Base):
    """The published asset on chain: one per chain id."""

    __tablename__ = "ocean_asset"
    chain_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    nft: Mapped[str] = mapped_column(String(42))
    datatoken: Mapped[str] = mapped_column(String(42))
    exchange: Mapped[str] = mapped_column(String(42))
    exchange_id: Mapped[str] = mapped_column(String(66))
    metadata_set: Mapped[bool] = mapped_column(default=False)


class UsedOrder(Base):
    """An order transaction already redeemed for a download (orders are single use)."""

    __tablename__ = "ocean_used_order"
    tx_hash: Mapped[str] = mapped_column(String(66), primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("ocean_asset.chain_id"))
    consumer: Mapped[str] = mapped_column(String(42))
    used_at: Mapped[datetime] = mapped_column()


@dataclass(frozen=True)
class Asset:
    chain_id: int
    nft: str
    datatoken: str
    exchange: str
    exchange_id: str
    metadata_set: bool


def _asset(rec: AssetRecord) -> Asset:
    return Asset(
        rec.chain_id, rec.nft, rec.datatoken, rec.exchange, rec.exchange_id, rec.metadata_set
    )


class OceanState:
    """Small repository over the publisher's SQLite file; one session per call."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

        @event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            # The publisher and the download service may create the file at the same moment;
            # create_all's check-then-create then loses the race in one of them. Look again.
            if "already exists" not in str(exc):
                raise
            Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # asset --------------------------------------------------------------
    def asset(self, chain_id: int) -> Asset | None:
        with self.sessions() as s:
            rec = s.get(AssetRecord, chain_id)
            return _asset(rec) if rec else None

    def save_asset(self, asset: Asset) -> None:
        with self.sessions.begin() as s:
            s.merge(
                AssetRecord(
                    chain_id=asset.chain_id,
                    nft=asset.nft,
                    datatoken=asset.datatoken,
                    exchange=asset.exchange,
                    exchange_id=asset.exchange_id,
                    metadata_set=asset.metadata_set,
                )
            )

    # rows ---------------------------------------------------------------
    def known_row_ids(self, row_ids: Sequence[int]) -> dict[int, str]:
        """Status of those row ids that are already staged or committed."""
        if not row_ids:
            return {}
        with self.sessions() as s:
            stmt = select(PublishedRow.row_id, PublishedRow.status).where(
                PublishedRow.row_id.in_(list(row_ids))
            )
            return {rid: status for rid, status in s.execute(stmt)}

    def all_rows(self, statuses: Sequence[str] = (STAGED, COMMITTED)) -> list[PublishedRow]:
        with self.sessions() as s:
            stmt = (
                select(PublishedRow)
                .where(PublishedRow.status.in_(list(statuses)))
                .order_by(PublishedRow.seq)
            )
            return list(s.scalars(stmt))

    def stage(self, rows: Sequence[tuple[int, list[str]]]) -> None:
        """Append rows (row_id, CSV fields) in one transaction; already-known ids are skipped."""
        with self.sessions.begin() as s:
            known = set(
                s.scalars(
                    select(PublishedRow.row_id).where(
                        PublishedRow.row_id.in_([rid for rid, _ in rows])
                    )
                )
            )
            for rid, fields in rows:
                if rid not in known:
                    s.add(PublishedRow(row_id=rid, fields_json=json.dumps(fields), status=STAGED))
                    known.add(rid)

    def commit_staged(self, seqs: Sequence[int], ref: str) -> None:
        """Mark exactly the rows whose digest went on chain as committed."""
        with self.sessions.begin() as s:
            for row in s.scalars(select(PublishedRow).where(PublishedRow.seq.in_(list(seqs)))):
                row.status = COMMITTED
                row.ref = ref

    def count(self, status: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).where(PublishedRow.status == status)) or 0)

    # orders -------------------------------------------------------------
    def redeem_order(self, tx_hash: str, chain_id: int, consumer: str) -> bool:
        """Record an order as used; False if it was already used (atomic, unique key)."""
        try:
            with self.sessions.begin() as s:
                s.add(
                    UsedOrder(
                        tx_hash=tx_hash.lower(),
                        chain_id=chain_id,
                        consumer=consumer,
                        used_at=datetime.now(UTC).replace(tzinfo=None),
                    )
                )
        except IntegrityError:
            return False
        return True

    def release_order(self, tx_hash: str) -> None:
        """Undo a redemption when the file could not be sent at all."""
        with self.sessions.begin() as s:
            rec = s.get(UsedOrder, tx_hash.lower())
            if rec is not None:
                s.delete(rec)
