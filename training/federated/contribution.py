"""What each hospital's data added to a federated model: Data Shapley and loss-delta tokens.

Utility is the model owner's held-out eval AUC. Coalitions' models are rebuilt, not retrained,
from the per-round updates the federation kept, round by round as GTG-Shapley does (Liu et
al., arXiv 2109.02053): in round r, coalition S's model is the global model the round
started from plus the example-weighted mean of S's accepted changes of that round, and the
empty coalition keeps the round's starting model. With server momentum (FedAvgM), a
non-empty coalition's step also carries momentum times the run's previous step, as the run
applied it, so the grand coalition still lands on the real next model. A hospital's value is
the sum over rounds of its Shapley value in each round's game. The values add up to the
run's total gain (the final model's AUC minus the initial one's), and every model scored
lies one round's step from the real trajectory. (Replaying a coalition's changes over the
whole run from the initial model instead, "one-round reconstruction", applies changes
computed at other models: with tens of local epochs per round that drove the rebuilt
BatchNorm statistics negative and most coalitions to constant outputs, measured.)

* n ≤ ``EXACT_LIMIT`` hospitals: exact Shapley over all 2^n coalitions, per round.
* more: Monte Carlo over random permutations per round, with the standard error of each value
  (rounds are independent estimates: their variances add).
* loss-delta tokens (the seed system's rule): per round, the drop in eval loss when the
  hospital's change alone is applied to that round's global model; summed over rounds.

Payment shares floor negative Shapley values at 0 and renormalise (all ≤ 0: shares by data
size); rankings and statements use the raw values. Under SecAgg+ no hospital's update was
ever seen, so no contribution can be measured (the difference of two coalition sums would be
one hospital's update): :func:`measure` refuses and pays by claimed data size.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import file_sha256
from models.nets import Architecture
from models.preprocessing import Preprocessing
from training.data import ImageFolder
from training.federated.aggregate import Update, fedavg, momentum_step
from training.federated.hospital import from_arrays, weight_mask
from training.federated.outputs import FederatedPaths, load_arrays
from training.loop import predict_logits
from training.metrics import roc_auc
from training.provenance import write_json

EXACT_LIMIT = 6
SCHEMA = "crypto-doctor/contribution/1"


class ContributionError(ValueError):
    """Contribution cannot be measured for this run; the message says why."""


@dataclass(frozen=True)
class Archive:
    initial: list[np.ndarray]
    #: per round: hospital -> its accepted change and example count
    rounds: list[dict[str, Update]]
    #: the round aggregates the federation actually applied
    aggregates: list[list[np.ndarray]]

    @property
    def hospitals(self) -> list[str]:
        return sorted({name for r in self.rounds for name in r})


def load_archive(updates_dir: Path) -> Archive:
    """Read ``<stem>.updates/`` as written by the federation (accepted updates only)."""
    initial_path = updates_dir / "round-000" / "global.npz"
    if not initial_path.is_file():
        raise ContributionError(f"{updates_dir}: no per-round updates (run without SecAgg+)")
    initial, _ = load_arrays(initial_path)
    rounds: list[dict[str, Update]] = []
    aggregates: list[list[np.ndarray]] = []
    for folder in sorted(updates_dir.glob("round-[0-9][0-9][0-9]")):
        if folder.name == "round-000":
            continue
        updates: dict[str, Update] = {}
        for path in sorted(folder.glob("*.npz")):
            if path.stem == "aggregate":
                continue
            arrays, meta = load_arrays(path)
            if meta.get("rejected"):
                continue
            updates[path.stem] = Update(path.stem, arrays, int(meta["examples"]))
        rounds.append(updates)
        aggregates.append(load_arrays(folder / "aggregate.npz")[0])
    return Archive(initial, rounds, aggregates)


def _plus(base: Sequence[np.ndarray], change: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [(b + c).astype(b.dtype) for b, c in zip(base, change, strict=True)]


def trajectory(archive: Archive) -> list[list[np.ndarray]]:
    """The run's global models: the initial one, then the one after each round's aggregate."""
    models = [[np.array(a) for a in archive.initial]]
    for aggregate in archive.aggregates:
        models.append(_plus(models[-1], aggregate))
    return models


def round_starts(archive: Archive) -> list[list[np.ndarray]]:
    """The global model each round started from."""
    return trajectory(archive)[:-1]


def final_arrays(archive: Archive) -> list[np.ndarray]:
    return trajectory(archive)[-1]


@dataclass(frozen=True)
class Momentum:
    """The run's server momentum: the round's step adds ``beta`` times the last step taken
    (from the run's archive) on the weights, whichever hospitals are in the coalition."""

    beta: float
    is_weight: list[bool]


def coalition_arrays(
    start: Sequence[np.ndarray],
    updates: dict[str, Update],
    coalition: frozenset[str],
    previous_step: Sequence[np.ndarray] | None = None,
    momentum: Momentum | None = None,
) -> list[np.ndarray]:
    """Round game: the round's starting model plus the FedAvg of the coalition's changes (plus
    the server momentum's carry, as the run applied it); the empty coalition: no step."""
    members = [u for name, u in updates.items() if name in coalition]
    if not members:
        return [np.array(a) for a in start]
    change = fedavg(members)
    if momentum is not None:
        change = momentum_step(change, previous_step, momentum.beta, momentum.is_weight)
    return _plus(start, change)


class Utility:
    """Eval AUC (and loss) of a model given as arrays."""

    def __init__(self, arch: Architecture, images: torch.Tensor, labels: np.ndarray) -> None:
        self.arch, self.images, self.labels = arch, images, labels

    def scores(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        logits = predict_logits(from_arrays(self.arch, arrays), self.images).double().numpy()
        return logits[:, 1] - logits[:, 0]

    def auc(self, arrays: Sequence[np.ndarray]) -> float:
        """AUC; a model with non-finite outputs ranks nothing (0.5)."""
        scores = self.scores(arrays)
        return roc_auc(scores, self.labels) if np.all(np.isfinite(scores)) else 0.5

    def loss(self, arrays: Sequence[np.ndarray]) -> float:
        logits = predict_logits(from_arrays(self.arch, arrays), self.images)
        return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(self.labels)))


class RoundGame:
    """One round's coalition game, cached per coalition."""

    def __init__(
        self,
        utility: Utility,
        start: Sequence[np.ndarray],
        updates: dict[str, Update],
        previous_step: Sequence[np.ndarray] | None = None,
        momentum: Momentum | None = None,
    ) -> None:
        self.utility, self.start, self.updates = utility, start, updates
        self.previous_step, self.momentum = previous_step, momentum
        self.cache: dict[frozenset[str], float] = {}

    def __call__(self, coalition: frozenset[str]) -> float:
        present = coalition & frozenset(self.updates)  # absent this round: adds nothing
        if present not in self.cache:
            arrays = coalition_arrays(
                self.start, self.updates, present, self.previous_step, self.momentum
            )
            self.cache[present] = self.utility.auc(arrays)
        return self.cache[present]


def round_games(
    archive: Archive, utility: Utility, momentum: Momentum | None = None
) -> list[RoundGame]:
    previous: list[list[np.ndarray] | None] = [None, *archive.aggregates[:-1]]
    return [
        RoundGame(utility, start, updates, before, momentum)
        for start, updates, before in zip(
            round_starts(archive), archive.rounds, previous, strict=True
        )
    ]


def gtg_shapley(
    players: Sequence[str],
    games: Sequence[Callable[[frozenset[str]], float]],
    *,
    permutations: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, float | None]]:
    """Sum over rounds of each round's Shapley value: exact, or Monte Carlo with ``permutations``."""
    values = dict.fromkeys(players, 0.0)
    variances = dict.fromkeys(players, 0.0)
    for number, game in enumerate(games):
        if permutations is None:
            for p, v in exact_shapley(players, game).items():
                values[p] += v
        else:
            means, errors = monte_carlo_shapley(players, game, permutations, seed + number)
            for p in players:
                values[p] += means[p]
                variances[p] += errors[p] ** 2
    if permutations is None:
        return values, dict.fromkeys(players)
    return values, {p: math.sqrt(v) for p, v in variances.items()}


def exact_shapley(
    players: Sequence[str], utility: Callable[[frozenset[str]], float]
) -> dict[str, float]:
    n = len(players)
    values = dict.fromkeys(players, 0.0)
    for player in players:
        others = [p for p in players if p != player]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                values[player] += weight * (utility(s | {player}) - utility(s))
    return values


def monte_carlo_shapley(
    players: Sequence[str], utility: Callable[[frozenset[str]], float], permutations: int, seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean marginal contribution over random orders, and its standard error."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {p: [] for p in players}
    for _ in range(permutations):
        order = list(players)
        rng.shuffle(order)
        coalition: frozenset[str] = frozenset()
        before = utility(coalition)
        for player in order:
            coalition = coalition | {player}
            after = utility(coalition)
            samples[player].append(after - before)
            before = after
    means = {p: float(np.mean(v)) for p, v in samples.items()}
    errors = {
        p: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
        for p, v in samples.items()
    }
    return means, errors


def loss_delta_tokens(archive: Archive, utility: Utility) -> dict[str, float]:
    """Per hospital: the eval-loss drop its change alone gave each round's global model, summed."""
    tokens = dict.fromkeys(archive.hospitals, 0.0)
    for start, updates in zip(round_starts(archive), archive.rounds, strict=True):
        before = utility.loss(start)
        for name, update in updates.items():
            tokens[name] += before - utility.loss(_plus(start, update.arrays))
    return tokens


def payment_shares(values: dict[str, float], sizes: dict[str, int]) -> dict[str, float]:
    """Floor at 0 and renormalise; if nothing is positive, shares by data size."""
    floored = {k: max(0.0, v) for k, v in values.items()}
    total = sum(floored.values())
    if total <= 0:
        size_total = sum(sizes.values()) or 1
        return {k: sizes.get(k, 0) / size_total for k in values}
    return {k: v / total for k, v in floored.items()}


def measure(checkpoint: Path, *, permutations: int = 200, seed: int = 0) -> dict[str, Any]:
    """Measure every hospital's contribution to ``checkpoint``; write ``<stem>.contribution.json``."""
    paths = FederatedPaths.for_checkpoint(checkpoint)
    provenance: dict[str, Any] = json.loads(paths.outputs.provenance.read_text())
    if provenance.get("training", {}).get("type") != "federated":
        raise ContributionError(f"{checkpoint} was not trained by the federation")
    sizes = {
        h["pseudonym"]: int(h.get("claimed_data", {}).get("size", 0) or 0)
        for h in provenance["hospitals"]
        if h["status"] == "included"
    }
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "model_version": file_sha256(checkpoint),
        "checkpoint": str(checkpoint),
    }
    if provenance["training"].get("secure_aggregation"):
        total = sum(sizes.values()) or 1
        record |= {
            "method": "data-size (SecAgg+)",
            "utility": None,
            "refused": "SecAgg+ hid every hospital's update; measuring contribution would need "
            "coalition sums, whose differences reveal single updates. Paid by claimed data size.",
            "hospitals": {
                name: {"share": size / total, "shapley": None, "shapley_se": None,
                       "loss_delta_tokens": None, "data_size": size}
                for name, size in sizes.items()
            },
        }  # fmt: skip
        write_json(_path(checkpoint), record)
        return record
    archive = load_archive(paths.updates)
    arch = Architecture(**provenance["architecture"])
    eval_set = ImageFolder(Path(provenance["eval_data"]["dir"]), Preprocessing(arch.image_size))
    utility = Utility(arch, eval_set.images, eval_set.labels.numpy())
    beta = float(provenance.get("settings", {}).get("server_momentum", 0.0) or 0.0)
    momentum = Momentum(beta, weight_mask(arch)) if beta else None
    games = round_games(archive, utility, momentum)
    players = sorted(set(sizes) | set(archive.hospitals))
    rounds = len(games)
    if len(players) <= EXACT_LIMIT:
        values, errors = gtg_shapley(players, games)
        method = f"exact-shapley per round ({2 ** len(players)} coalitions x {rounds} rounds)"
    else:
        values, errors = gtg_shapley(players, games, permutations=permutations, seed=seed)
        method = f"monte-carlo-shapley per round ({permutations} permutations x {rounds} rounds)"
    tokens = loss_delta_tokens(archive, utility)
    shares = payment_shares(values, sizes)
    record |= {
        "method": method,
        "utility": "eval AUC, per round: the round's starting global model plus the FedAvg of "
        "the coalition's stored changes of that round (GTG-Shapley), summed over rounds"
        + (f"; server momentum {beta:g} carried as the run applied it" if beta else "")
        + f"; on {len(eval_set)} images of {provenance['eval_data']['dir']}",
        "utility_all": utility.auc(final_arrays(archive)),
        "utility_none": utility.auc(archive.initial),
        "hospitals": {
            name: {
                "share": shares[name],
                "shapley": values[name],
                "shapley_se": errors[name],
                "loss_delta_tokens": tokens.get(name, 0.0),
                "data_size": sizes.get(name, 0),
            }
            for name in players
        },
    }
    write_json(_path(checkpoint), record)
    return record


def _path(checkpoint: Path) -> Path:
    stem = Path(checkpoint).with_suffix("")
    return stem.with_name(stem.name + ".contribution.json")
