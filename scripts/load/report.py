"""The figures (throughput, latencies) and the printed/saved JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from load.clients import Stats
from load.system import System


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(system: System, stats: Stats) -> dict:
    """Throughput and latencies, from the clients' clocks and the database's timestamps."""
    from sqlalchemy import select

    from marketplace.storage import make_engine
    from marketplace.storage.models import Case

    engine = make_engine(system.db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Case.id, Case.predicted_at, Case.settled_at).where(
                Case.id.in_(list(stats.accepted))
            )
        ).all()
    engine.dispose()
    predict, settle, predicted_times = [], [], []
    for case_id, predicted_at, settled_at in rows:
        posted = stats.accepted[case_id]["posted"]
        if predicted_at is not None:
            predict.append(predicted_at.timestamp() - posted)
            predicted_times.append(predicted_at.timestamp())
        if settled_at is not None and case_id in stats.last_vote_sent:
            settle.append(max(0.0, settled_at.timestamp() - stats.last_vote_sent[case_id]))
    first_post = min((r["posted"] for r in stats.accepted.values()), default=0.0)
    span = (max(predicted_times) - first_post) if predicted_times else float("nan")
    return {
        "accepted": len(stats.accepted),
        "predicted": len(predict),
        "settled": sum(1 for *_, s in rows if s is not None),
        "images_per_s": round(len(predicted_times) / span, 2) if span and span > 0 else None,
        "post_to_prediction_s": {
            "p50": round(percentile(predict, 0.5), 2),
            "p95": round(percentile(predict, 0.95), 2),
            "max": round(max(predict, default=float("nan")), 2),
        },
        "decision_to_settlement_s": {
            "p50": round(percentile(settle, 0.5), 3),
            "p95": round(percentile(settle, 0.95), 3),
            "max": round(max(settle, default=float("nan")), 3),
        },
        "votes": stats.votes,
        "claim_conflicts": stats.claim_conflicts,
        "post_retries": stats.post_retries,
        "vote_errors": dict(stats.vote_errors),
        "rejected_posts": dict(stats.rejected),
    }


def report(name: str, fig: dict, problems: list[str], extra: dict, out: Path | None) -> int:
    result = {"test": name, **fig, **extra, "problems": problems}
    print(json.dumps(result, indent=2), flush=True)
    if out:
        out.write_text(json.dumps(result, indent=2) + "\n")
    if problems:
        print(f"[{name}] FAILED: {len(problems)} problem(s):", *problems, sep="\n  ")
        return 1
    print(f"[{name}] OK: nothing lost, nothing doubled")
    return 0
