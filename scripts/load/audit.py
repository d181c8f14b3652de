"""The audit: nothing lost, nothing doubled, in the database, the ledger, the Ocean publisher's
state, the published CSV and the on-chain digest."""

from __future__ import annotations

import collections
import json
import time

from load.clients import Stats
from load.system import System

DEFAULT_K = 5


def wait_published(system: System, k: int, deadline: float) -> None:
    """Until no research row is left unpublished except groups smaller than k."""
    while time.monotonic() < deadline:
        pending = audit_rows(system.db_url)["releasable_unpublished"]
        if pending == 0:
            return
        time.sleep(1)


def audit_rows(db_url: str, k: int = DEFAULT_K) -> dict:
    from sqlalchemy import select

    from marketplace.ocean.kanon import group_counts
    from marketplace.ocean.settings import DEFAULT_QUASI_IDENTIFIERS
    from marketplace.storage import make_engine
    from marketplace.storage.models import ResearchRow

    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(ResearchRow)).all()
    engine.dispose()
    unpublished = [dict(r._mapping) for r in rows if r.published_at is None]
    counts = group_counts(unpublished, DEFAULT_QUASI_IDENTIFIERS)
    releasable = sum(n for n in counts.values() if n >= k)
    return {
        "rows": len(rows),
        "published": len(rows) - len(unpublished),
        # groups with fewer than k rows wait for company (k-anonymity), by design
        "held_back_by_k": len(unpublished) - releasable,
        "releasable_unpublished": releasable,
    }


def audit(
    system: System, stats: Stats, k: int = DEFAULT_K, notes: list[str] | None = None
) -> list[str]:
    """Nothing lost, nothing doubled: returns the list of violations (empty: all good).

    With ``notes``, cases stored without a 202 reaching any client (a connection killed
    between commit and answer) are noted there instead of counted as problems."""
    from marketplace.storage import make_engine, make_sessionmaker

    problems: list[str] = []
    engine = make_engine(system.db_url)
    session = make_sessionmaker(engine)()
    try:
        cases = _check_cases(session, set(stats.accepted), problems, notes)
        _check_ledger(session, cases, problems)
        all_rows, published = _check_research_rows(session, cases, problems)
        _check_ocean(system, all_rows, published, problems)
        rows = audit_rows(system.db_url, k)
        if rows["releasable_unpublished"]:
            problems.append(f"{rows['releasable_unpublished']} releasable rows not published")
    finally:
        session.close()
        engine.dispose()
    return problems


def _check_cases(session, accepted: set[str], problems: list[str], notes: list[str] | None):
    """Every accepted case stored exactly once and settled; returns the stored cases by id."""
    from sqlalchemy import func, select

    from marketplace.storage.models import Case

    stored = session.execute(select(Case.id, func.count()).group_by(Case.id)).all()
    stored_ids = {cid for cid, _ in stored}
    if lost := accepted - stored_ids:
        problems.append(f"{len(lost)} accepted cases are missing: {sorted(lost)[:5]}")
    if extra := stored_ids - accepted:
        (problems if notes is None else notes).append(
            f"{len(extra)} stored cases no patient got a 202 for"
        )
    if doubled := [cid for cid, n in stored if n != 1]:
        problems.append(f"cases stored more than once: {doubled[:5]}")
    cases = {c.id: c for c in session.scalars(select(Case))}
    unsettled = [cid for cid in accepted if cid in cases and cases[cid].status != "settled"]
    if unsettled:
        problems.append(f"{len(unsettled)} accepted cases did not settle")
    return cases


def _check_ledger(session, cases: dict, problems: list[str]) -> None:
    """The ledger balances, and each case's escrow was funded and paid out exactly once."""
    from sqlalchemy import select

    from marketplace.storage.models import LedgerEntry, LedgerTransaction, Vote

    txns = collections.defaultdict(list)
    for t in session.scalars(select(LedgerTransaction)):
        txns[(t.case_id, t.kind)].append(t.id)
    entries = collections.defaultdict(list)
    for e in session.scalars(select(LedgerEntry)):
        entries[e.transaction_id].append(e)
    total = sum(e.amount for es in entries.values() for e in es)
    if total != 0:
        problems.append(f"ledger does not balance: entries sum to {total}")
    for tid, es in entries.items():
        if sum(e.amount for e in es) != 0:
            problems.append(f"ledger transaction {tid} is unbalanced")
    votes = collections.defaultdict(list)
    for v in session.scalars(select(Vote)):
        votes[v.case_id].append(v)
    for cid, case in cases.items():
        problems.extend(_check_case_money(cid, case, txns, entries, votes[cid]))


def _check_case_money(cid: str, case, txns: dict, entries: dict, votes: list) -> list[str]:
    """One case: escrow funded once; once settled, paid out once, exactly the escrow, to the
    doctors who agreed, and given its research row."""
    from marketplace.domain.ledger import TREASURY, doctor_account, escrow_account

    funds = txns.get((cid, "fund_escrow"), [])
    if case.predicted_at is not None and len(funds) != 1:
        return [f"case {cid}: escrow funded {len(funds)} times"]
    if len(txns.get((cid, "royalty_fee"), [])) > 1:
        return [f"case {cid}: royalty fee booked more than once"]
    escrow = escrow_account(cid)
    funded = sum(
        e.amount
        for kind in ("fund_escrow", "escalation")
        for tid in txns.get((cid, kind), [])
        for e in entries[tid]
        if e.account == escrow
    )
    if case.status != "settled":
        return []
    payouts = txns.get((cid, "payout"), [])
    if len(payouts) != 1:
        return [f"case {cid}: paid out {len(payouts)} times"]
    problems = []
    legs = entries[payouts[0]]
    paid = sum(e.amount for e in legs if e.account != escrow)
    if paid != funded:
        problems.append(f"case {cid}: paid {paid}, escrow held {funded}")
    agreeing = {doctor_account(v.doctor_id) for v in votes if v.label == case.diagnosis}
    payees = {e.account for e in legs if e.account != escrow}
    if payees - agreeing or TREASURY in payees:
        problems.append(f"case {cid}: paid someone who did not agree")
    if case.research_row_id is None:
        problems.append(f"settled case {cid} has no research row")
    return problems


def _check_research_rows(session, cases: dict, problems: list[str]) -> tuple[dict, set]:
    """One research row per case and none without one; returns all rows and the published ids."""
    from sqlalchemy import select

    from marketplace.storage.models import ResearchRow

    row_owners = collections.Counter(
        c.research_row_id for c in cases.values() if c.research_row_id is not None
    )
    if doubled_rows := [r for r, n in row_owners.items() if n != 1]:
        problems.append(f"research rows shared by cases: {doubled_rows[:5]}")
    all_rows = {r.id: r for r in session.scalars(select(ResearchRow))}
    if orphans := set(all_rows) - set(row_owners):
        problems.append(f"{len(orphans)} research rows belong to no case")
    published = {rid for rid, r in all_rows.items() if r.published_at is not None}
    return all_rows, published


def _check_ocean(system: System, all_rows: dict, published: set, problems: list[str]) -> None:
    """The publisher's committed rows, the CSV file and the on-chain digest match the DB."""
    from marketplace import research
    from marketplace.ocean.dataset import COLUMNS, digest, public_row
    from marketplace.ocean.state import COMMITTED, STAGED, OceanState

    state = OceanState(system.ocean_dir / "publisher.sqlite3")
    try:
        committed = state.all_rows([COMMITTED])
        staged = state.all_rows([STAGED])
    finally:
        state.close()
    committed_ids = [r.row_id for r in committed]
    if len(committed_ids) != len(set(committed_ids)):
        problems.append("a row was committed to the data set twice")
    if set(committed_ids) != published:
        problems.append(
            f"published in the DB {len(published)} rows, committed on Ocean "
            f"{len(set(committed_ids))} (staged {len(staged)})"
        )
    expected = collections.Counter(
        tuple(public_row(research._public(all_rows[rid]))[c] for c in COLUMNS)
        for rid in published
        if rid in all_rows
    )
    csv_path = system.ocean_dir / "crypto-doctor-diagnoses.csv"
    data = csv_path.read_bytes() if csv_path.exists() else b""
    lines = data.decode().splitlines()[1:] if data else []
    in_csv = collections.Counter(tuple(line.split(",")) for line in lines)
    if in_csv != expected:
        problems.append(
            f"CSV rows differ from the published rows ({sum(in_csv.values())} vs "
            f"{sum(expected.values())})"
        )
    on_chain = asset_digest(system)
    if published and (on_chain or {}).get("sha256") != digest(data):
        problems.append(f"CSV digest {digest(data)[:12]} is not the one on chain {on_chain}")


def asset_digest(system: System) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(system.service_url + "/asset", timeout=30) as reply:
            return json.loads(reply.read()).get("digest")
    except OSError:
        return None
