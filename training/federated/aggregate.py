"""The model owner's side of a round, free of Flower: check each update, then aggregate.

An update is the hospital's full model state after its local epochs (a list of arrays in the
order of the global model's ``state_dict``), with the number of training examples it used.
Checks come first, so one broken or hostile node cannot crash the federation or poison the
average with NaN: an update with the wrong number of arrays, a wrong shape, a non-finite
value, or a non-positive example count is rejected with a reason, and the round goes on
without it.

* :func:`fedavg`: the example-weighted mean (McMahan et al. 2017).
* :func:`fedmedian`: the coordinate-wise median (Yin et al. 2018), which ignores how many
  examples a node claims, so a node cannot buy influence by lying about its size, and one
  outlier per coordinate moves it little.

Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged in float and rounded.

* :func:`momentum_step`: server momentum on top of either (FedAvgM, Hsu et al. 2019): the
  global model moves by ``v = beta * v_previous + aggregate`` on the weights, so the direction
  the rounds agree on builds up; BatchNorm's running statistics are not gradients and take
  the plain aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

STRATEGIES = ("fedavg", "fedmedian")

Arrays = list[np.ndarray]


@dataclass(frozen=True)
class Update:
    hospital: str
    arrays: Arrays
    examples: int
    #: what the hospital reported about its local training (loss, seconds)
    metrics: dict[str, float] = field(default_factory=dict)


def check_update(reference: Sequence[np.ndarray], update: Update) -> str | None:
    """Why ``update`` cannot be aggregated against the global model ``reference``; None if it can."""
    if update.examples <= 0:
        return f"claimed {update.examples} training examples"
    if len(update.arrays) != len(reference):
        return f"{len(update.arrays)} arrays, the model has {len(reference)}"
    for index, (got, want) in enumerate(zip(update.arrays, reference, strict=True)):
        if got.shape != want.shape:
            return f"array {index} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if not np.issubdtype(got.dtype, np.number):
            return f"array {index} has dtype {got.dtype}"
        if not np.all(np.isfinite(got)):
            return f"array {index} holds NaN or infinite values"
    return None


def fedavg(updates: Sequence[Update]) -> Arrays:
    """Example-weighted mean of the updates' arrays."""
    _require(updates)
    total = float(sum(u.examples for u in updates))
    out: Arrays = []
    for index, first in enumerate(updates[0].arrays):
        mean = sum(u.arrays[index].astype(np.float64) * (u.examples / total) for u in updates)
        out.append(_cast(np.asarray(mean), first.dtype))
    return out


def fedmedian(updates: Sequence[Update]) -> Arrays:
    """Coordinate-wise median of the updates' arrays (example counts play no part)."""
    _require(updates)
    out: Arrays = []
    for index, first in enumerate(updates[0].arrays):
        stacked = np.stack([u.arrays[index].astype(np.float64) for u in updates])
        out.append(_cast(np.median(stacked, axis=0), first.dtype))
    return out


def aggregate(strategy: str, updates: Sequence[Update]) -> Arrays:
    if strategy == "fedavg":
        return fedavg(updates)
    if strategy == "fedmedian":
        return fedmedian(updates)
    raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")


def _require(updates: Sequence[Update]) -> None:
    if not updates:
        raise ValueError("no updates to aggregate")


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return np.rint(values).astype(dtype)
    return values.astype(dtype)


def momentum_step(
    change: Sequence[np.ndarray],
    previous: Sequence[np.ndarray] | None,
    momentum: float,
    is_weight: Sequence[bool],
) -> Arrays:
    """The step the global model takes: ``momentum * previous + change`` on the weights
    (``previous``: the last round's step, None in the first round), ``change`` elsewhere."""
    if previous is None or momentum == 0:
        return [np.array(c) for c in change]
    return [
        (momentum * p.astype(np.float64) + c.astype(np.float64)).astype(c.dtype)
        if weight
        else np.array(c)
        for c, p, weight in zip(change, previous, is_weight, strict=True)
    ]
