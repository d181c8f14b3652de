"""Model royalties through the ledger: contribution shares in, Ocean sales booked, payouts out.

    python -m marketplace.royalties enrol --pseudonym H --name "St Elsewhere"  # prints a token
    python -m marketplace.royalties import-shares models/resnet18.contribution.json
    python -m marketplace.royalties scan-sales      # book new sales of the data set, once each
    python -m marketplace.royalties payout          # pay the pools of the last complete period
    python -m marketplace.royalties statement       # as a hospital: CRYPTO_DOCTOR_HOSPITAL_TOKEN

Pools are funded by a fee per diagnosed case (booked by ``intake.open_case`` with the case) and
by the data set's sales: OCEAN proceeds x ``credits_per_ocean``, split over the model versions
of the rows the release held at the sale's block time. The pure rules are
``domain.royalties``; this module stores them, one transaction per call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Insert, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from infra.settings import ENV_PREFIX, add_flags, flag, settings_from
from marketplace import ledger
from marketplace.domain import royalties
from marketplace.errors import InvalidInput
from marketplace.storage.engine import DEFAULT_MARKET_DB_URL
from marketplace.storage.models import (
    HospitalShare,
    LedgerEntry,
    LedgerTransaction,
    ModelContribution,
    OceanSale,
    ResearchRow,
    RoyaltyPayout,
    SaleScan,
)
from marketplace.storage.unit import read_only, unit_of_work

log = logging.getLogger(__name__)
HOSPITAL_TOKEN_ENV = ENV_PREFIX + "HOSPITAL_TOKEN"


class CommandFailed(RuntimeError):
    """A CLI command that could not run (the chain or the marketplace did not answer)."""


@dataclass(frozen=True)
class RoyaltySettings:
    """Settings of the royalties CLI (flags over ``CRYPTO_DOCTOR_*`` env)."""

    db_url: str = field(
        default=DEFAULT_MARKET_DB_URL, metadata=flag("the marketplace's store (SQLAlchemy URL)")
    )
    credits_per_ocean: int = field(
        default=10, metadata=flag("credits booked per OCEAN a sale of the data set brought in")
    )
    payout_period: timedelta = field(
        default=timedelta(days=30), metadata=flag("length of a payout period (seconds)")
    )
    payout_epoch: str = field(
        default="2026-01-01T00:00:00+00:00",
        metadata=flag("start of the first payout period (ISO 8601 with timezone)"),
    )
    ocean_rpc_url: str = field(
        default="http://127.0.0.1:8545", metadata=flag("chain JSON-RPC URL", env="OCEAN_RPC_URL")
    )
    ocean_data_dir: Path = field(
        default=Path("var/ocean"),
        metadata=flag(
            "the Ocean publisher's folder (its state names the exchange)", env="OCEAN_DATA_DIR"
        ),
    )
    marketplace_url: str = field(
        default="http://127.0.0.1:8081", metadata=flag("the marketplace, for `statement`")
    )

    def __post_init__(self) -> None:
        if self.credits_per_ocean < 0:
            raise ValueError("credits_per_ocean must be >= 0")
        if self.payout_period <= timedelta(0):
            raise ValueError("payout_period must be positive")
        if self.epoch.tzinfo is None:
            raise ValueError("payout_epoch must carry a timezone")

    @property
    def epoch(self) -> datetime:
        return datetime.fromisoformat(self.payout_epoch)


# --- contribution shares -------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    model_version: str
    hospitals: int
    changed: bool


@unit_of_work
def import_contribution(
    session: Session, record: royalties.ContributionRecord, *, now: datetime
) -> Imported:
    """Register a version's shares. The same file again changes nothing; different shares
    replace the old ones only while nothing of that version has been paid out."""
    version = record.model_version
    existing = session.get(ModelContribution, version)
    if existing is not None:
        old = session.scalars(
            select(HospitalShare).where(HospitalShare.model_version == version)
        ).all()
        same = (
            existing.method == record.method
            and existing.utility == record.utility
            and sorted(
                (h.pseudonym, h.share, h.shapley, h.shapley_se, h.loss_delta_tokens, h.data_size)
                for h in old
            )
            == sorted(
                (h.pseudonym, h.share, h.shapley, h.shapley_se, h.loss_delta_tokens, h.data_size)
                for h in record.hospitals
            )
        )
        if same:
            return Imported(version, len(old), changed=False)
        paid = session.scalar(
            select(func.count())
            .select_from(RoyaltyPayout)
            .where(RoyaltyPayout.model_version == version)
        )
        if paid:
            raise InvalidInput(f"model version {version[:16]} has been paid out: its shares stay")
        for row in old:
            session.delete(row)
        session.delete(existing)
        session.flush()
    session.add(
        ModelContribution(
            model_version=version, method=record.method, utility=record.utility, imported_at=now
        )
    )
    session.flush()
    session.add_all(
        HospitalShare(
            model_version=version,
            pseudonym=h.pseudonym,
            share=h.share,
            shapley=h.shapley,
            shapley_se=h.shapley_se,
            loss_delta_tokens=h.loss_delta_tokens,
            data_size=h.data_size,
        )
        for h in record.hospitals
    )
    return Imported(version, len(record.hospitals), changed=True)


def load_contribution_file(path: Path) -> royalties.ContributionRecord:
    """Read and validate a ``<checkpoint stem>.contribution.json``."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
    try:
        return royalties.parse_contribution(document)
    except royalties.InvalidContribution as exc:
        raise InvalidInput(f"{path}: {exc}") from exc


# --- Ocean sales ---------------------------------------------------------------------------


def rows_sold(session: Session, sold_at: datetime) -> dict[str | None, int]:
    """Rows the release held at ``sold_at`` (released at or before it), per model version."""
    counts = session.execute(
        select(ResearchRow.model_version, func.count())
        .where(ResearchRow.published_at.is_not(None), ResearchRow.published_at <= sold_at)
        .group_by(ResearchRow.model_version)
    )
    return {version: int(n) for version, n in counts}


def _insert_once(session: Session, row: dict[str, Any]) -> int | None:
    dialect = session.get_bind().dialect.name
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(OceanSale).values(row).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(OceanSale).values(row).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"sales booking supports SQLite and PostgreSQL, not {dialect}")
    inserted: int | None = session.execute(statement.returning(OceanSale.id)).scalar_one_or_none()
    return inserted


@unit_of_work
def book_sales(
    session: Session,
    sales: Sequence[royalties.Sale],
    *,
    credits_per_ocean: int,
    now: datetime,
    cursor: tuple[str, str, int] | None = None,
) -> list[int]:
    """Book each sale not booked before (by block hash and log index); returns their ids.

    ``cursor`` (genesis hash, exchange id, next block) is saved in the same transaction.
    """
    booked = []
    for sale in sales:
        known = session.scalar(
            select(OceanSale.id).where(
                OceanSale.block_hash == sale.block_hash.lower(),
                OceanSale.log_index == sale.log_index,
            )
        )
        if known is not None:
            continue  # booked by an earlier scan (a re-scan only reads)
        rows = rows_sold(session, sale.sold_at)
        credits = royalties.ocean_to_credits(sale.ocean_wei, credits_per_ocean)
        sale_id = _insert_once(
            session,
            {
                "chain_id": sale.chain_id,
                "block_hash": sale.block_hash.lower(),
                "log_index": sale.log_index,
                "block_number": sale.block_number,
                "tx_hash": sale.tx_hash.lower(),
                "sold_at": sale.sold_at,
                "ocean_wei": str(sale.ocean_wei),
                "credits": credits,
                "rows": sum(rows.values()),
            },
        )
        if sale_id is None:
            continue  # a concurrent scan booked it first
        if credits > 0:
            txn = ledger.post(
                session,
                kind="royalty_sale",
                postings=royalties.sale_postings(credits, rows),
                now=now,
                case_id=None,
            )
            sale_row = session.get(OceanSale, sale_id)
            assert sale_row is not None
            sale_row.transaction_id = txn
        booked.append(sale_id)
    if cursor is not None:
        genesis, exchange_id, next_block = cursor
        scan = session.get(SaleScan, (genesis, exchange_id))
        if scan is None:
            session.add(
                SaleScan(genesis_hash=genesis, exchange_id=exchange_id, next_block=next_block)
            )
        else:
            scan.next_block = max(scan.next_block, next_block)
    return booked


@read_only
def scan_cursor(session: Session, genesis: str, exchange_id: str) -> int:
    """The block the next scan of this exchange on this chain starts from."""
    scan = session.get(SaleScan, (genesis, exchange_id))
    return 0 if scan is None else int(scan.next_block)


# --- payouts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payout:
    """One version's pool paid out: to each hospital, and the rounding left over."""

    model_version: str
    period_end: datetime
    pool: int
    amounts: dict[str, int]
    rounding: int


def _pool_at(session: Session, account: str, cutoff: datetime) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(LedgerEntry.account == account, LedgerTransaction.created_at < cutoff)
    )
    return int(total or 0)


@unit_of_work
def pay_out(session: Session, *, now: datetime, epoch: datetime, period: timedelta) -> list[Payout]:
    """Pay each version's pool as it stood at the end of the last complete period, by share.

    Once per period and version (a second run pays nothing). A version whose shares are not
    imported yet keeps its pool; the first payout after the import pays it all.
    """
    cutoff = royalties.period_cutoff(now, epoch, period)
    if cutoff is None:
        return []
    prefix = royalties.pool_account("")
    accounts = session.scalars(
        select(LedgerEntry.account).where(LedgerEntry.account.startswith(prefix)).distinct()
    ).all()
    done = set(
        session.scalars(
            select(RoyaltyPayout.model_version).where(RoyaltyPayout.period_end == cutoff)
        )
    )
    payouts = []
    for account in sorted(accounts):
        version = account[len(prefix) :]
        if version in done or not royalties.valid_model_version(version):
            continue
        shares = {
            s.pseudonym: s.share
            for s in session.scalars(
                select(HospitalShare).where(HospitalShare.model_version == version)
            )
        }
        pool = _pool_at(session, account, cutoff)
        if pool <= 0 or not shares or not any(shares.values()):
            continue
        postings = royalties.payout_postings(version, pool, shares)
        txn = ledger.post(session, kind="royalty_payout", postings=postings, now=now, case_id=None)
        session.add(
            RoyaltyPayout(
                period_end=cutoff,
                model_version=version,
                pool=pool,
                transaction_id=txn,
                created_at=now,
            )
        )
        split = royalties.payout_split(pool, shares)
        payouts.append(Payout(version, cutoff, pool, split.amounts, split.rounding))
    session.flush()
    return payouts


# --- CLI -----------------------------------------------------------------------------------


def _scan(settings: RoyaltySettings, session: Session) -> dict[str, Any]:
    from marketplace.ocean.chain import ChainUnavailable, connect
    from marketplace.ocean.sales import genesis_hash, read_sales
    from marketplace.ocean.state import OceanState

    try:
        w3 = connect(settings.ocean_rpc_url)
        state = OceanState(settings.ocean_data_dir / "publisher.sqlite3")
        try:
            asset = state.asset(int(w3.eth.chain_id))
        finally:
            state.close()
        if asset is None:
            return {"read": 0, "booked": 0, "detail": "nothing published on this chain yet"}
        genesis = genesis_hash(w3)
        start = scan_cursor(session, genesis, asset.exchange_id)
        sales, next_block = read_sales(w3, asset, start)
    except ChainUnavailable as exc:
        raise CommandFailed(f"the chain did not answer ({exc}); nothing was booked") from exc
    booked = book_sales(
        session,
        sales,
        credits_per_ocean=settings.credits_per_ocean,
        now=datetime.now(UTC),
        cursor=(genesis, asset.exchange_id, next_block),
    )
    return {"read": len(sales), "booked": len(booked), "next_block": next_block}


def _statement(settings: RoyaltySettings) -> dict[str, Any]:
    import requests

    token = os.environ.get(HOSPITAL_TOKEN_ENV, "")
    if not token:
        raise InvalidInput(f"set {HOSPITAL_TOKEN_ENV} to the hospital's API token")
    url = settings.marketplace_url.rstrip("/") + "/api/hospitals/me/statement"
    try:
        reply = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        document: dict[str, Any] = reply.json()
    except (requests.RequestException, ValueError) as exc:
        raise CommandFailed(f"{url}: {exc}") from exc
    if reply.status_code != 200:
        raise CommandFailed(
            f"{reply.status_code} {document.get('error')}: {document.get('detail')}"
        )
    return document


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: prints one JSON document per command."""
    from marketplace import hospitals
    from marketplace.storage import make_engine, make_sessionmaker, migrate

    parser = argparse.ArgumentParser(
        prog="python -m marketplace.royalties", description=__doc__.split("\n\n")[0]
    )
    add_flags(parser, RoyaltySettings)
    sub = parser.add_subparsers(dest="command", required=True)
    enrol = sub.add_parser("enrol", help="enrol a hospital; prints its API token once")
    enrol.add_argument("--pseudonym", required=True)
    enrol.add_argument("--name", required=True)
    imp = sub.add_parser("import-shares", help="register a version's contribution file")
    imp.add_argument("file", type=Path)
    sub.add_parser("scan-sales", help="book the data set's new sales from the chain")
    pay = sub.add_parser("payout", help="pay the pools of the last complete payout period")
    pay.add_argument("--now", default=None, help="ISO time to pay as of, not later than now")
    sub.add_parser("statement", help=f"the hospital's own statement ({HOSPITAL_TOKEN_ENV})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        settings = settings_from(RoyaltySettings, args)
    except ValueError as exc:
        parser.error(str(exc))

    result: Any
    try:
        if args.command == "statement":
            result = _statement(settings)
        else:
            migrate(settings.db_url)
            engine = make_engine(settings.db_url)
            try:
                with make_sessionmaker(engine)() as session:
                    now = datetime.now(UTC)
                    if args.command == "enrol":
                        token = hospitals.enrol_hospital(
                            session, pseudonym=args.pseudonym, display_name=args.name, now=now
                        )
                        result = {"pseudonym": args.pseudonym, "token": token}
                    elif args.command == "import-shares":
                        record = load_contribution_file(args.file)
                        result = asdict(import_contribution(session, record, now=now))
                    elif args.command == "scan-sales":
                        result = _scan(settings, session)
                    else:
                        try:
                            when = datetime.fromisoformat(args.now) if args.now else now
                        except ValueError as exc:
                            raise InvalidInput(f"--now: {exc}") from exc
                        if when.tzinfo is None:
                            raise InvalidInput("--now must carry a timezone")
                        if when > now:
                            raise InvalidInput("--now cannot be in the future (no early payout)")
                        paid = pay_out(
                            session, now=when, epoch=settings.epoch, period=settings.payout_period
                        )
                        result = {
                            "payouts": [
                                asdict(p) | {"period_end": p.period_end.isoformat()} for p in paid
                            ]
                        }
            finally:
                engine.dispose()
    except (InvalidInput, CommandFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
