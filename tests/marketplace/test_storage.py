"""Storage layer: migrations match the models, SQLite pragmas, two processes sharing a file."""

import multiprocessing
from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from marketplace import cases
from marketplace.storage import Base, make_engine, make_sessionmaker, migrate
from marketplace.storage.models import Case, LedgerEntry
from tests.marketplace.helpers import MODEL_SHA, token_hash


def test_migrations_match_models(engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_is_repeatable(db_url) -> None:
    migrate(db_url)  # already at head: a no-op, not an error
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
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
    for i in range(n):
        with factory() as session:
            now = datetime(2026, 11, 1, tzinfo=UTC)
            case_id = cases.create_case(session, patient_token_hash=token_hash(str(i)), now=now)
            opened += cases.record_prediction(
                session,
                case_id,
                label="no_tumor",
                confidence=0.9,
                backbone="resnet18",
                model_sha256=MODEL_SHA,
                now=now,
            )
    results.put(opened)
    engine.dispose()


def test_two_processes_share_the_database(db_url, session) -> None:
    """Both party processes write at once: no 'database is locked', nothing lost."""
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


def test_party_processes_can_migrate_at_the_same_time(empty_db_url) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrator, args=(empty_db_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    engine = make_engine(empty_db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    engine.dispose()
