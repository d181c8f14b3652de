"""Benchmark: what the royalty bookings cost the marketplace's store (SQLite in a temp folder).

* intake of a case (``intake.open_case``, its own transaction) with the royalty fee booked and
  without it (``royalty_fee_per_case`` 100 vs 0), alternating blocks in the same run;
* booking one sale of the data set (rows per version counted, postings split), with
  ``--rows`` released rows over ``--versions`` model versions;
* one payout of ``--versions`` pools to ``--hospitals`` hospitals each;
* reading one hospital's statement.

Prints a markdown table and saves JSON (``bench/royalties.json``, ``bench/royalties.md``).

    .venv/bin/python scripts/bench_royalties.py [--cases 400 --sales 200 --rows 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from marketplace import hospitals, intake, royalties  # noqa: E402
from marketplace.domain import royalties as rules  # noqa: E402
from marketplace.domain.policy import MarketPolicy  # noqa: E402
from marketplace.messages import CaseOpened  # noqa: E402
from marketplace.storage import make_engine, make_sessionmaker, migrate  # noqa: E402
from marketplace.storage.models import ResearchRow  # noqa: E402

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = timedelta(days=30)


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3),
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=400, help="cases per variant")
    parser.add_argument("--sales", type=int, default=200)
    parser.add_argument("--rows", type=int, default=2000, help="released research rows")
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--hospitals", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "royalties.json")
    args = parser.parse_args()

    versions = [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(args.versions)]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/market.sqlite3"
        migrate(url)
        engine = make_engine(url)
        session = make_sessionmaker(engine)()
        at = EPOCH + timedelta(days=1)

        def open_one(fee: int, n: int) -> None:
            message = CaseOpened(
                case_id=uuid.uuid4().hex,
                submitted_at=at,
                predicted_at=at,
                model_label="tumor",
                confidence=0.8,
                backbone="lenet",
                model_sha256=versions[n % len(versions)],
            )
            policy = MarketPolicy(royalty_fee_per_case=fee)
            assert intake.open_case_now(session, message, now=at, policy=policy)

        timings: dict[int, list[float]] = {0: [], 100: []}
        block = 50
        for start in range(0, args.cases, block):
            for fee in (0, 100):  # alternate blocks: both variants see the same load
                for n in range(start, min(args.cases, start + block)):
                    timings[fee].append(_timed(lambda f=fee, i=n: open_one(f, i)))

        with session.begin():
            for i in range(args.rows):
                session.add(
                    ResearchRow(
                        day=date(2026, 1, 2),
                        backbone="lenet",
                        model_label="tumor",
                        confidence_bucket="0.8-0.9",
                        diagnosis="tumor",
                        reviewers=3,
                        agreement=1.0,
                        unfamiliar=False,
                        model_version=versions[i % len(versions)],
                        published_at=at,
                        published_ref="bench",
                    )
                )
        sale_times = []
        for n in range(args.sales):
            sale = rules.Sale(8996, f"0x{n:064x}", 1, n, f"0x{n:064x}", at, 10 * 10**18)
            sale_times.append(
                _timed(
                    lambda s=sale: royalties.book_sales(session, [s], credits_per_ocean=10, now=at)
                )
            )
        rescan = _timed(
            lambda: royalties.book_sales(
                session,
                [
                    rules.Sale(8996, f"0x{n:064x}", 1, n, f"0x{n:064x}", at, 10 * 10**18)
                    for n in range(args.sales)
                ],
                credits_per_ocean=10,
                now=at,
            )
        )

        names = [f"hospital-{i}" for i in range(args.hospitals)]
        for version in versions:
            weights = list(range(1, args.hospitals + 1))
            shares = {n: w / sum(weights) for n, w in zip(names, weights, strict=True)}
            record = rules.ContributionRecord(
                version,
                "exact-shapley",
                "bench",
                tuple(
                    rules.HospitalContribution(n, s, s, None, None, 100) for n, s in shares.items()
                ),
            )
            royalties.import_contribution(session, record, now=at)
        hospitals.enrol_hospital(session, pseudonym=names[0], display_name="H0", now=at)
        paid: list[royalties.Payout] = []
        payout_s = _timed(
            lambda: paid.extend(
                royalties.pay_out(session, now=EPOCH + PERIOD, epoch=EPOCH, period=PERIOD)
            )
        )
        statement_times = [
            _timed(lambda: hospitals.statement(session, names[0], reader=names[0]))
            for _ in range(50)
        ]
        session.close()
        engine.dispose()

    report = {
        "settings": vars(args) | {"out": str(args.out)},
        "load": os.getloadavg(),
        "intake_without_fee": _ms(timings[0]),
        "intake_with_fee": _ms(timings[100]),
        "book_one_sale": _ms(sale_times),
        "rescan_all_sales_s": round(rescan, 4),
        "payout": {
            "versions": len(paid),
            "hospitals_each": args.hospitals,
            "seconds": round(payout_s, 4),
            "pool_total": sum(p.pool for p in paid),
            "rounding_total": sum(p.rounding for p in paid),
        },
        "statement": _ms(statement_times),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = "\n".join(
        [
            f"royalty bookings on SQLite (load {report['load'][0]:.1f}); median / p95 ms",
            "",
            "| step | median ms | p95 ms |",
            "|---|---|---|",
            f"| open a case, no fee ({args.cases}) | {report['intake_without_fee']['median_ms']} | "
            f"{report['intake_without_fee']['p95_ms']} |",
            f"| open a case with its royalty fee ({args.cases}) | "
            f"{report['intake_with_fee']['median_ms']} | {report['intake_with_fee']['p95_ms']} |",
            f"| book one sale ({args.rows} released rows, {args.versions} versions) | "
            f"{report['book_one_sale']['median_ms']} | {report['book_one_sale']['p95_ms']} |",
            f"| re-scan of all {args.sales} sales (books none) | "
            f"{report['rescan_all_sales_s'] * 1000:.1f} (total) | |",
            f"| payout of {len(paid)} pools x {args.hospitals} hospitals | "
            f"{report['payout']['seconds'] * 1000:.1f} (total) | |",
            f"| a hospital's statement | {report['statement']['median_ms']} | "
            f"{report['statement']['p95_ms']} |",
        ]
    )
    print(table)
    args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
