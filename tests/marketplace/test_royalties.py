"""Model royalties through the real ledger (SQLite, and PostgreSQL when configured): the case fee
booked once per case, sales once per chain event, payouts by contribution share that balance to
the last credit, and statements a hospital reads only for itself."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from infra.messaging import generate_key
from marketplace import hospitals, intake, ledger, royalties
from marketplace.domain import royalties as rules
from marketplace.domain.ledger import check_balanced
from marketplace.domain.policy import DEFAULT_POLICY, MarketPolicy
from marketplace.errors import InvalidInput, NotYourStatement
from marketplace.service import MarketplaceSettings, create_app
from marketplace.storage.models import (
    Case,
    LedgerEntry,
    LedgerTransaction,
    OceanSale,
    ResearchRow,
    RoyaltyPayout,
)
from marketplace.storage.unit import unit_of_work
from tests.marketplace.flows import case_opened
from tests.marketplace.helpers import MODEL_SHA, T0
from tests.marketplace.servers import serve

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = timedelta(days=30)
OTHER_SHA = "cd" * 32
FEE = DEFAULT_POLICY.royalty_fee_per_case


def contribution_file(
    tmp_path: Path, version: str, shares: dict[str, float], shapley: dict[str, float] | None = None
) -> Path:
    """A ``<stem>.contribution.json`` exactly as the federation's measurement writes it."""
    document = {
        "schema": "crypto-doctor/contribution/1",
        "model_version": version,
        "method": "exact-shapley",
        "utility": "AUC on the owner's held-out validation set",
        "hospitals": {
            name: {
                "share": share,
                "shapley": (shapley or shares)[name],
                "shapley_se": None,
                "loss_delta_tokens": 0.1,
                "data_size": 300,
            }
            for name, share in shares.items()
        },
    }
    path = tmp_path / f"model-{version[:6]}.contribution.json"
    path.write_text(json.dumps(document))
    return path


def import_file(session, path: Path, now: datetime = T0) -> royalties.Imported:
    return royalties.import_contribution(session, royalties.load_contribution_file(path), now=now)


def open_cases(session, n: int, *, version: str = MODEL_SHA, now: datetime = T0) -> None:
    for _ in range(n):
        message = case_opened(now=now)
        message = type(message)(**{**message.__dict__, "model_sha256": version})
        assert intake.open_case_now(session, message, now=now)


def pay(session, now: datetime) -> list[royalties.Payout]:
    return royalties.pay_out(session, now=now, epoch=EPOCH, period=PERIOD)


# --- pure rules ---------------------------------------------------------------------------


@given(
    total=st.integers(0, 10**12),
    weights=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=8).filter(
        lambda w: sum(w) > 0
    ),
)
def test_a_split_balances_to_the_last_credit(total: int, weights: list[float]) -> None:
    split = rules.split_by_weight(total, {f"h{i}": w for i, w in enumerate(weights)})
    assert sum(split.amounts.values()) + split.rounding == total
    assert 0 <= split.rounding < len(weights)
    assert all(a >= 0 for a in split.amounts.values())


@given(pool=st.integers(1, 10**9), raw=st.lists(st.floats(-1, 1), min_size=1, max_size=6))
def test_payout_postings_are_balanced_and_follow_the_shares(pool: int, raw: list[float]) -> None:
    floored = [max(0.0, v) for v in raw]
    if sum(floored) == 0:
        floored = [1.0] * len(raw)
    shares = {f"h{i}": v / sum(floored) for i, v in enumerate(floored)}
    postings = rules.payout_postings(MODEL_SHA, pool, shares)
    check_balanced(postings)
    paid = {p.account: p.amount for p in postings if p.amount > 0}
    for name, share in shares.items():
        got = paid.get(rules.hospital_account(name), 0)
        assert abs(got - pool * share) < 1 + 1e-6 * pool
        if share == 0:
            assert got == 0  # a floored (negative) Shapley value is paid nothing


@given(
    credits=st.integers(1, 10**9),
    rows=st.dictionaries(st.sampled_from([MODEL_SHA, OTHER_SHA, None]), st.integers(0, 50)),
)
def test_a_sale_goes_to_the_versions_of_its_rows(credits: int, rows: dict) -> None:
    postings = rules.sale_postings(credits, rows)
    check_balanced(postings)
    received = {p.account: p.amount for p in postings if p.amount > 0}
    total_rows = sum(rows.values())
    for version, count in rows.items():
        if version is not None and count:
            assert (
                abs(received.get(rules.pool_account(version), 0) - credits * count / total_rows) < 1
            )


def test_the_measurements_own_file_shapes_are_accepted() -> None:
    """As ``training.federated.contribution`` writes them: method with detail, extra keys, and
    under SecAgg+ no utility."""
    measured = rules.parse_contribution(
        {
            "schema": rules.SCHEMA,
            "model_version": MODEL_SHA,
            "checkpoint": "models/federated-lenet.pth",
            "method": "monte-carlo-shapley (200 permutations)",
            "utility": "eval AUC of the rebuilt model, " + "x" * 300,
            "utility_all": 0.93,
            "hospitals": {"h1": {"share": 1.0, "shapley": 0.2, "shapley_se": 0.01}},
        }
    )
    assert measured.method == "monte-carlo-shapley" and len(measured.utility) == 200
    secagg = rules.parse_contribution(
        {
            "schema": rules.SCHEMA,
            "model_version": MODEL_SHA,
            "method": "data-size (SecAgg+)",
            "utility": None,
            "refused": "SecAgg+ hid every hospital's update",
            "hospitals": {
                "a": {"share": 0.25, "shapley": None, "data_size": 100},
                "b": {"share": 0.75, "shapley": None, "data_size": 300},
            },
        }
    )
    assert secagg.method == "data-size (SecAgg+)" and "SecAgg+" in secagg.utility
    assert rules.rank_by_shapley(secagg.hospitals) == {"b": 1, "a": 2}


def test_ocean_converts_at_the_configured_rate_rounding_down() -> None:
    assert rules.ocean_to_credits(10 * 10**18, 10) == 100
    assert rules.ocean_to_credits(10**18 - 1, 1) == 0
    assert rules.ocean_to_credits(25 * 10**17, 3) == 7


def test_period_cutoff_is_the_end_of_the_last_complete_period() -> None:
    assert rules.period_cutoff(EPOCH + PERIOD / 2, EPOCH, PERIOD) is None
    assert rules.period_cutoff(EPOCH + PERIOD, EPOCH, PERIOD) == EPOCH + PERIOD
    assert rules.period_cutoff(EPOCH + 2.5 * PERIOD, EPOCH, PERIOD) == EPOCH + 2 * PERIOD


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema": "other/1"}, "schema"),
        ({"model_version": "xyz"}, "model_version"),
        ({"method": "vibes"}, "method"),
        ({"method": "exact-shapleyish"}, "method"),
        ({"utility": None}, "utility"),
        ({"hospitals": {}}, "hospitals"),
        ({"hospitals": {"a": {"share": 0.5}, "b": {"share": 0.4}}}, "sum"),
        ({"hospitals": {"a": {"share": -0.1}, "b": {"share": 1.1}}}, "share"),
        ({"hospitals": {"bad name!": {"share": 1.0}}}, "pseudonym"),
        ({"hospitals": {"a": {"share": 1.0, "data_size": -3}}}, "data_size"),
    ],
)
def test_malformed_contribution_files_are_refused(change: dict, message: str) -> None:
    document = {
        "schema": rules.SCHEMA,
        "model_version": MODEL_SHA,
        "method": "exact-shapley",
        "utility": "AUC",
        "hospitals": {"a": {"share": 1.0}},
    } | change
    with pytest.raises(rules.InvalidContribution, match=message):
        rules.parse_contribution(document)


# --- on the real ledger -------------------------------------------------------------------


def test_the_case_fee_is_booked_once_per_case_with_the_case(session) -> None:
    message = case_opened()
    assert intake.open_case_now(session, message, now=T0)
    assert not intake.open_case_now(session, message, now=T0)  # redelivered: nothing again
    kinds = session.scalars(
        select(LedgerTransaction.kind).where(LedgerTransaction.case_id == message.case_id)
    ).all()
    assert sorted(kinds) == ["fund_escrow", "royalty_fee"]
    assert ledger.balance(session, rules.pool_account(MODEL_SHA)) == FEE
    assert ledger.balance(session, rules.CLINIC_FEES) == -FEE


class Crash(Exception):
    pass


def test_a_crash_before_commit_books_neither_case_nor_fee_and_redelivery_books_once(
    session,
) -> None:
    message = case_opened()

    @unit_of_work
    def deliver_then_crash(s) -> None:
        assert intake.open_case(s, message, now=T0)
        raise Crash  # the process dies before the inbox's transaction commits

    with pytest.raises(Crash):
        deliver_then_crash(session)
    assert ledger.all_balances(session) == {} and session.get(Case, message.case_id) is None
    assert intake.open_case_now(session, message, now=T0)  # the clinic delivers it again
    assert not intake.open_case_now(session, message, now=T0)
    assert ledger.balance(session, rules.pool_account(MODEL_SHA)) == FEE


def test_a_refused_case_books_no_fee(session) -> None:
    bad = type(case_opened())(**{**case_opened().__dict__, "confidence": 1.5})
    with pytest.raises(InvalidInput):
        intake.open_case_now(session, bad, now=T0)
    assert ledger.all_balances(session) == {}


def test_no_fee_when_the_fee_is_zero(session) -> None:
    assert intake.open_case_now(
        session, case_opened(), now=T0, policy=MarketPolicy(royalty_fee_per_case=0)
    )
    assert ledger.balance(session, rules.pool_account(MODEL_SHA)) == 0


def test_payouts_split_the_pool_by_share_and_sum_exactly_to_it(session, tmp_path) -> None:
    shares = {"north": 0.5, "south": 0.3, "east": 0.2, "freerider": 0.0}
    import_file(
        session,
        contribution_file(tmp_path, MODEL_SHA, shares, {**shares, "freerider": -0.01}),
    )
    open_cases(session, 7, now=EPOCH + timedelta(days=3))  # 7 x fee in period 1
    assert pay(session, EPOCH + timedelta(days=10)) == []  # period 1 not over yet
    [payout] = pay(session, EPOCH + PERIOD + timedelta(hours=1))
    assert payout.pool == 7 * FEE
    assert sum(payout.amounts.values()) + payout.rounding == payout.pool
    assert sum(shares.values()) == pytest.approx(1.0)
    assert payout.amounts == {"east": 140, "freerider": 0, "north": 350, "south": 210}
    assert payout.rounding == 0
    assert ledger.balance(session, rules.pool_account(MODEL_SHA)) == 0
    for name in shares:
        assert ledger.balance(session, rules.hospital_account(name)) == payout.amounts[name]
    # The same period again pays nothing; the next one pays only what came in since.
    assert pay(session, EPOCH + PERIOD + timedelta(days=2)) == []
    open_cases(session, 3, now=EPOCH + PERIOD + timedelta(days=5))
    [second] = pay(session, EPOCH + 2 * PERIOD)
    assert second.pool == 3 * FEE
    assert session.scalar(select(func.count()).select_from(RoyaltyPayout)) == 2
    assert sum(ledger.all_balances(session).values()) == 0


def test_rounding_goes_to_the_rounding_account(session, tmp_path) -> None:
    import_file(
        session, contribution_file(tmp_path, MODEL_SHA, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    )
    policy = MarketPolicy(royalty_fee_per_case=100)
    assert intake.open_case_now(session, case_opened(now=EPOCH), now=EPOCH, policy=policy)
    [payout] = pay(session, EPOCH + PERIOD)
    assert payout.amounts == {"a": 33, "b": 33, "c": 33} and payout.rounding == 1
    assert ledger.balance(session, rules.ROYALTY_ROUNDING) == 1


def test_a_version_without_shares_keeps_its_pool_until_they_are_imported(session, tmp_path) -> None:
    open_cases(session, 2, version=OTHER_SHA, now=EPOCH + timedelta(days=1))
    assert pay(session, EPOCH + PERIOD) == []
    assert ledger.balance(session, rules.pool_account(OTHER_SHA)) == 2 * FEE
    import_file(session, contribution_file(tmp_path, OTHER_SHA, {"a": 0.25, "b": 0.75}))
    [payout] = pay(session, EPOCH + PERIOD + timedelta(days=1))
    assert payout.pool == 2 * FEE and payout.amounts == {"a": FEE // 2, "b": 3 * FEE // 2}


def test_shares_of_a_paid_version_cannot_change(session, tmp_path) -> None:
    path = contribution_file(tmp_path, MODEL_SHA, {"a": 0.5, "b": 0.5})
    assert import_file(session, path).changed
    assert not import_file(session, path).changed  # the same file again: no change
    open_cases(session, 1, now=EPOCH)
    pay(session, EPOCH + PERIOD)
    (tmp_path / "new").mkdir()
    other = contribution_file(tmp_path / "new", MODEL_SHA, {"a": 0.9, "b": 0.1})
    with pytest.raises(InvalidInput, match="paid out"):
        import_file(session, other)


def _released_rows(session, versions: list[str | None], at: datetime) -> None:
    with session.begin():
        for version in versions:
            session.add(
                ResearchRow(
                    day=date(2026, 2, 1),
                    backbone="resnet18",
                    model_label="tumor",
                    confidence_bucket="0.8-0.9",
                    diagnosis="tumor",
                    reviewers=3,
                    agreement=1.0,
                    unfamiliar=False,
                    model_version=version,
                    published_at=at,
                    published_ref="0xtx",
                )
            )


def _sale(n: int, at: datetime, ocean: int = 10) -> rules.Sale:
    return rules.Sale(
        chain_id=8996,
        block_hash=f"0x{n:064x}",
        log_index=2,
        block_number=n,
        tx_hash=f"0x{n + 1000:064x}",
        sold_at=at,
        ocean_wei=ocean * 10**18,
    )


def test_a_sale_is_booked_once_and_split_over_the_versions_of_its_rows(session) -> None:
    t = EPOCH + timedelta(days=2)
    _released_rows(session, [MODEL_SHA] * 3 + [OTHER_SHA], t)
    _released_rows(session, [OTHER_SHA] * 4, t + timedelta(hours=2))  # after the sale
    sales = [_sale(1, t + timedelta(hours=1))]
    [booked] = royalties.book_sales(session, sales, credits_per_ocean=10, now=t)
    # A re-scan (a restarted node serves the same blocks) books nothing more.
    assert royalties.book_sales(session, sales, credits_per_ocean=10, now=t) == []
    assert royalties.book_sales(session, sales * 2, credits_per_ocean=10, now=t) == []
    assert ledger.balance(session, rules.pool_account(MODEL_SHA)) == 75
    assert ledger.balance(session, rules.pool_account(OTHER_SHA)) == 25
    assert ledger.balance(session, rules.OCEAN_SALES) == -100
    sale = session.get(OceanSale, booked)
    assert (sale.rows, sale.credits, sale.ocean_wei) == (4, 100, str(10 * 10**18))
    assert session.scalar(select(func.count()).select_from(OceanSale)) == 1


def _funded_since(session, account: str, cutoff: datetime) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(
            LedgerEntry.account == account,
            LedgerEntry.amount > 0,
            LedgerTransaction.created_at >= cutoff,
        )
    )
    session.commit()
    return int(total)


@pytest.mark.parametrize("seed", [16, 61])
def test_random_royalty_runs_keep_the_ledger_invariants(session, tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    versions = [MODEL_SHA, OTHER_SHA]
    for version in versions:
        names = [f"h{i}" for i in range(rng.randint(1, 5))]
        raw = [rng.uniform(-0.2, 1) for _ in names]
        floored = [max(0.0, v) for v in raw]
        if not any(floored):
            floored[0] = 1.0
        shares = {n: v / sum(floored) for n, v in zip(names, floored, strict=True)}
        import_file(session, contribution_file(tmp_path, version, shares))
    now, sale_no = EPOCH, 0
    paid_to: dict[str, int] = {}  # hospital -> credits its payouts gave it
    for _ in range(60):
        now += timedelta(days=rng.randint(1, 9))
        action = rng.random()
        if action < 0.5:
            policy = MarketPolicy(royalty_fee_per_case=rng.randint(1, 37))
            msg = case_opened(now=now)
            msg = type(msg)(**{**msg.__dict__, "model_sha256": rng.choice(versions)})
            intake.open_case_now(session, msg, now=now, policy=policy)
        elif action < 0.75:
            _released_rows(session, [rng.choice([*versions, None])], now)
            sale_no += 1
            sale = _sale(sale_no, now + timedelta(minutes=1), ocean=rng.randint(1, 7))
            royalties.book_sales(session, [sale], credits_per_ocean=rng.randint(1, 13), now=now)
        else:
            for payout in pay(session, now):
                assert sum(payout.amounts.values()) + payout.rounding == payout.pool
                assert 0 <= payout.rounding < len(payout.amounts)
                for name, amount in payout.amounts.items():
                    paid_to[name] = paid_to.get(name, 0) + amount
            balances = ledger.all_balances(session)
            assert sum(balances.values()) == 0  # money is never created or lost
            for name, amount in paid_to.items():
                assert balances.get(rules.hospital_account(name), 0) == amount
            hospitals_total = sum(v for k, v in balances.items() if k.startswith("hospital:"))
            funded = -balances.get(rules.CLINIC_FEES, 0) - balances.get(rules.OCEAN_SALES, 0)
            pools = sum(v for k, v in balances.items() if k.startswith("royalty:"))
            assert funded == pools + hospitals_total + balances.get(rules.ROYALTY_ROUNDING, 0)
            assert all(
                v >= 0 for k, v in balances.items() if k.startswith(("royalty:", "hospital:"))
            )
            # Each pool holds exactly what came in since the end of the period last paid.
            cutoff = rules.period_cutoff(now, EPOCH, PERIOD)
            for version in versions:
                if cutoff is not None:
                    account = rules.pool_account(version)
                    assert balances.get(account, 0) == _funded_since(session, account, cutoff)
    assert sum(paid_to.values()) > 0  # the run did pay something


# --- statements ---------------------------------------------------------------------------


def test_statement_shows_contribution_share_pool_payouts_and_balance(session, tmp_path) -> None:
    shares = {"north": 0.6, "south": 0.4, "rider": 0.0}
    import_file(session, contribution_file(tmp_path, MODEL_SHA, shares, {**shares, "rider": -0.02}))
    hospitals.enrol_hospital(session, pseudonym="rider", display_name="Rider", now=T0)
    open_cases(session, 5, now=EPOCH)
    pay(session, EPOCH + PERIOD)
    open_cases(session, 1, now=EPOCH + PERIOD + timedelta(days=1))
    mine = hospitals.statement(session, "rider", reader="rider")
    [version] = mine.contributions
    assert version.shapley == -0.02 and version.share == 0.0 and version.rank == 3
    assert version.pool_funded == 6 * FEE and version.pool_unpaid == FEE
    assert [p.amount for p in mine.payouts] == [0] and mine.balance == 0
    with pytest.raises(NotYourStatement):
        hospitals.statement(session, "north", reader="rider")


MARKET_KEY = generate_key()


def test_a_hospital_reads_its_own_statement_and_no_other(db_url, session, tmp_path) -> None:
    import_file(session, contribution_file(tmp_path, MODEL_SHA, {"north": 0.7, "south": 0.3}))
    north = hospitals.enrol_hospital(session, pseudonym="north", display_name="North", now=T0)
    hospitals.enrol_hospital(session, pseudonym="south", display_name="South", now=T0)
    open_cases(session, 4, now=EPOCH)
    pay(session, EPOCH + PERIOD)
    settings = MarketplaceSettings(
        db_url=db_url, signing_key=MARKET_KEY, patient_base_url="http://127.0.0.1:9"
    )
    with serve(create_app(settings)) as url:
        auth = {"Authorization": f"Bearer {north}"}
        mine = requests.get(f"{url}/api/hospitals/me/statement", headers=auth, timeout=10)
        assert mine.status_code == 200, mine.text
        body = mine.json()
        assert body["pseudonym"] == "north" and body["balance"] == 280 == body["total_paid"]
        assert body["contributions"][0]["share"] == 0.7
        assert body["payouts"][0]["pool"] == 4 * FEE
        named = requests.get(f"{url}/api/hospitals/north/statement", headers=auth, timeout=10)
        assert named.json() == body
        other = requests.get(f"{url}/api/hospitals/south/statement", headers=auth, timeout=10)
        assert (other.status_code, other.json()["error"]) == (403, "not_your_statement")
        nobody = requests.get(f"{url}/api/hospitals/me/statement", timeout=10)
        assert nobody.status_code == 401
        forged = requests.get(
            f"{url}/api/hospitals/me/statement",
            headers={"Authorization": "Bearer " + "x" * 43},
            timeout=10,
        )
        assert forged.status_code == 401
        # The CLI reads the same statement with the token from the environment only.
        cli = subprocess.run(
            [sys.executable, "-m", "marketplace.royalties", "--marketplace-url", url, "statement"],
            env=os.environ | {royalties.HOSPITAL_TOKEN_ENV: north},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout) == body


def test_cli_enrols_imports_and_pays(db_url, tmp_path, capsys) -> None:
    path = contribution_file(tmp_path, MODEL_SHA, {"a": 0.5, "b": 0.5})
    assert royalties.main(["--db-url", db_url, "enrol", "--pseudonym", "a", "--name", "A"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token"]) >= 20
    assert royalties.main(["--db-url", db_url, "import-shares", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert royalties.main(["--db-url", db_url, "payout", "--now", "2026-03-01T00:00:00+00:00"]) == 0
    assert json.loads(capsys.readouterr().out) == {"payouts": []}  # nothing funded yet
    future = (datetime.now(UTC) + PERIOD).isoformat()
    assert royalties.main(["--db-url", db_url, "payout", "--now", future]) == 2
    assert "future" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert royalties.main(["--db-url", db_url, "import-shares", str(bad)]) == 2
    assert "schema" in capsys.readouterr().err
