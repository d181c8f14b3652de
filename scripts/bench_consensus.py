"""Benchmark: reliability-weighted consensus vs plain majority on simulated panels.

Simulates a market of doctors with known (hidden) accuracies reviewing cases
with known truth, driving the real domain rules (``marketplace.domain``):
panels of 3, settlement rule, panel widening, and the Beta-reputation
reliability each doctor earns from agreeing with settled diagnoses (the truth is
never shown to the market). Prints a markdown table and saves JSON.

    .venv/bin/python scripts/bench_consensus.py [--cases 3000 --seeds 5 --out var/bench_consensus.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marketplace.domain.consensus import LABELS, Ballot, PanelRule, evaluate  # noqa: E402
from marketplace.domain.reputation import BetaReliability  # noqa: E402

log = logging.getLogger("bench_consensus")


@dataclass
class SimDoctor:
    accuracy: float  # hidden truth: P(vote == true label)
    agree: float = 0.0
    dissent: float = 0.0


def population(rng: random.Random, n: int) -> list[SimDoctor]:
    """A realistic mix: most doctors good, some mediocre, a few near-random."""
    doctors = []
    for _ in range(n):
        u = rng.random()
        if u < 0.55:
            acc = rng.uniform(0.85, 0.97)
        elif u < 0.85:
            acc = rng.uniform(0.65, 0.78)
        else:
            acc = rng.uniform(0.50, 0.60)
        doctors.append(SimDoctor(acc))
    return doctors


@dataclass
class Policy:
    name: str
    rule: PanelRule
    reliability: str  # "none" (all equal), "beta" (learned), "oracle" (true accuracy)


def run(policy: Policy, seed: int, n_cases: int, n_doctors: int) -> dict[str, float]:
    rng = random.Random(seed)
    doctors = population(rng, n_doctors)
    vote_rng = random.Random(seed * 7919 + 1)
    beta = BetaReliability()
    correct = reviews = widened = 0
    for _ in range(n_cases):
        truth = rng.choice(LABELS)
        order = rng.sample(range(n_doctors), n_doctors)  # who claims seats, in order
        panel_size, seat = policy.rule.panel_size, 0
        votes: list[tuple[int, str]] = []
        while True:
            while len(votes) < panel_size:
                d = order[seat]
                seat += 1
                right = vote_rng.random() < doctors[d].accuracy
                votes.append((d, truth if right else next(x for x in LABELS if x != truth)))
            ballots = [Ballot(label, _reliability(policy, doctors[d], beta)) for d, label in votes]
            outcome = evaluate(ballots, panel_size, policy.rule)
            if outcome.action == "widen":
                widened += panel_size == policy.rule.panel_size
                panel_size = outcome.panel_size
                continue
            assert outcome.action == "settle" and outcome.label is not None
            break
        correct += outcome.label == truth
        reviews += len(votes)
        for d, label in votes:  # the market learns from consensus, never from the truth
            if label == outcome.label:
                doctors[d].agree += 1
            else:
                doctors[d].dissent += 1
    return {
        "accuracy": correct / n_cases,
        "correct": correct,
        "reviews_per_case": reviews / n_cases,
        "widened_share": widened / n_cases,
    }


def _reliability(policy: Policy, doctor: SimDoctor, beta: BetaReliability) -> float:
    if policy.reliability == "oracle":
        return doctor.accuracy
    if policy.reliability == "beta":
        return beta.estimate(doctor.agree, doctor.dissent)
    return 0.8


POLICIES = [
    Policy("plain majority, 2 of 3", PanelRule(use_reliability=False), "none"),
    Policy(
        "plain majority, 3 of 5 (fixed 5 seats)",
        PanelRule(panel_size=5, quorum=3, max_panel=5, use_reliability=False),
        "none",
    ),
    Policy("quorum + widening, equal weights (no history)", PanelRule(), "none"),
    Policy("quorum + widening, Beta-reputation weights (shipped)", PanelRule(), "beta"),
    Policy("quorum + widening, true accuracies (oracle bound)", PanelRule(), "oracle"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--doctors", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("var/bench_consensus.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results = []
    for policy in POLICIES:
        runs = [run(policy, seed, args.cases, args.doctors) for seed in range(args.seeds)]
        acc = [r["accuracy"] for r in runs]
        results.append(
            {
                "policy": policy.name,
                "accuracy_mean": statistics.mean(acc),
                "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "correct_mean": statistics.mean(r["correct"] for r in runs),
                "reviews_per_case": statistics.mean(r["reviews_per_case"] for r in runs),
                "widened_share": statistics.mean(r["widened_share"] for r in runs),
                "runs": runs,
            }
        )
    lines = [
        f"Simulated market: {args.doctors} doctors (55% acc 0.85-0.97, 30% 0.65-0.78, "
        f"15% 0.50-0.60), {args.cases} cases x {args.seeds} seeds, truth hidden from the market.",
        "",
        "| policy | settled correctly (mean of seeds) | accuracy | reviews / case | widened |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['policy']} | {r['correct_mean']:.0f} / {args.cases} | "
            f"{r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f} | {r['reviews_per_case']:.2f} | "
            f"{r['widened_share']:.1%} |"
        )
    table = "\n".join(lines)
    print(table)  # the benchmark's output is the table itself
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
    )
    log.info("saved %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
