"""Storage layer: migrations match the models (and carry old data), SQLite pragmas, two
processes sharing a file."""

import multiprocessing
from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text

from marketplace import intake
from marketplace.storage import Base, make_engine, make_sessionmaker, migrate
from marketplace.storage.migrate import alembic_config
from marketplace.storage.models import Case, LedgerEntry
from tests.marketplace.flows import case_opened

HEAD = "0007"


def test_migrations_match_models(engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_to_its_own_store_keeps_every_market_row(empty_db_url) -> None:
    """0001 -> 0002 on a shared database in use: the market's cases, claims, votes and ledger
    stay (foreign keys intact), the clinic's queued and failed cases go, and back again."""
    config = alembic_config(empty_db_url)
    command.upgrade(config, "0001")
    engine = make_engine(empty_db_url)
    at = "'2026-11-01 09:00:00'"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO doctors (id, display_name, specialty, token_hash, reputation,"
                f" beta_agree, beta_dissent, created_at) VALUES ('d1', 'Dr', 'neuro', 'h', 100,"
                f" 0, 0, {at})"
            )
        )
        conn.execute(
            text(
                "INSERT INTO cases (id, patient_token_hash, status, submitted_at, min_tier,"
                " reviewers_needed, claims_count, escalation_level, bounty, confidence) VALUES"
                f" ('c1', 'h1', 'under_review', {at}, 0, 3, 1, 0, 1000, 0.9),"
                f" ('c2', 'h2', 'queued', {at}, 0, 0, 0, 0, NULL, NULL),"
                f" ('c3', 'h3', 'failed', {at}, 0, 0, 0, 0, NULL, NULL)"
            )
        )
        conn.execute(
            text(f"INSERT INTO claims (case_id, doctor_id, claimed_at) VALUES ('c1', 'd1', {at})")
        )
        conn.execute(
            text(
                "INSERT INTO votes (case_id, doctor_id, label, salt, commitment, cast_at)"
                f" VALUES ('c1', 'd1', 'tumor', 's', 'r', {at})"
            )
        )
        conn.execute(
            text(
                "INSERT INTO ledger_transactions (kind, case_id, created_at)"
                f" VALUES ('fund_escrow', 'c1', {at})"
            )
        )
    engine.dispose()  # the migration runs on its own connection

    migrate(empty_db_url)
    engine = make_engine(empty_db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, status, bounty FROM cases")).all() == [
            ("c1", "under_review", 1000)
        ]
        for table in ("claims", "votes", "ledger_transactions"):
            assert conn.execute(text(f"SELECT case_id FROM {table}")).scalars().all() == ["c1"]
        columns = {c["name"] for c in inspect(conn).get_columns("cases")}
        assert not columns & {"patient_token_hash", "failure_reason"}
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    with make_sessionmaker(engine)() as session:
        case = session.get(Case, "c1")
        assert case.status == "under_review" and case.confidence == 0.9
    engine.dispose()

    command.downgrade(config, "0001")
    command.upgrade(config, "head")


def test_migrate_is_repeatable(db_url) -> None:
    migrate(db_url)  # already at head: a no-op, not an error
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    engine.dispose()


def test_sqlite_pragmas(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'db.sqlite3'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


def _writer(url: str, n: int, results) -> None:  # runs in a child process
    engine = make_engine(url)
    factory = make_sessionmaker(engine)
    opened = 0
    for _ in range(n):
        with factory() as session:
            now = datetime(2026, 11, 1, tzinfo=UTC)
            opened += intake.open_case_now(
                session, case_opened(label="no_tumor", confidence=0.9, now=now), now=now
            )
    results.put(opened)
    engine.dispose()


def test_two_processes_share_the_database(db_url, session) -> None:
    """Two processes (the service and a tool) write at once: no 'database is locked', nothing
    lost."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, 25, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in procs) == [25, 25]
    assert session.scalar(select(func.count()).select_from(Case)) == 50
    assert session.scalar(select(func.sum(LedgerEntry.amount))) == 0


def _migrator(url: str) -> None:  # runs in a child process
    migrate(url)


def test_processes_can_migrate_at_the_same_time(empty_db_url) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrator, args=(empty_db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    engine = make_engine(empty_db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    engine.dispose()
