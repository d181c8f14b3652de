"""Model royalties: hospitals paid for what their data added to a model version (pure).

Every model version (the sha256 of its checkpoint file) has a royalty pool, a ledger account
funded from two sources: a fee per diagnosed case (``clinic-fees`` → pool, booked with the
case) and the Ocean data set's sales (``ocean-sales`` → the pools of the versions whose rows
the sale contained, in proportion to those rows). At each payout period the pool is split
among the version's hospitals by their contribution ``share`` (the federation's measurement,
already floored at 0 and renormalised). Every split rounds each amount down; what rounding
leaves over goes to ``royalty-rounding``, so each split balances to the last credit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from marketplace.domain.ledger import Posting

#: What the clinic owes for diagnosed cases (negative by the fees booked).
CLINIC_FEES = "clinic-fees"
#: Credits converted from the OCEAN the data set's sales brought in (negative by them).
OCEAN_SALES = "ocean-sales"
#: What rounding each split down leaves over: at most (recipients - 1) credits per split.
ROYALTY_ROUNDING = "royalty-rounding"
#: Pool of sold rows with no model version (settled before versions were recorded).
UNATTRIBUTED = "unattributed"

SCHEMA = "crypto-doctor/contribution/1"
METHODS = ("exact-shapley", "monte-carlo-shapley", "data-size (SecAgg+)")
_PSEUDONYM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: Shares in a contribution file sum to 1 within this (they are JSON floats).
SHARE_TOLERANCE = 1e-6
ONE_OCEAN_WEI = 10**18
#: Payout shares count to this many decimal places.
SHARE_DECIMALS = 9


class InvalidContribution(ValueError):
    """A contribution file that does not follow ``crypto-doctor/contribution/1``."""


def hospital_account(pseudonym: str) -> str:
    return f"hospital:{pseudonym}"


def pool_account(model_version: str) -> str:
    """The royalty pool of a model version (or of :data:`UNATTRIBUTED` rows)."""
    return f"royalty:{model_version}"


def valid_pseudonym(pseudonym: str) -> bool:
    return bool(_PSEUDONYM.fullmatch(pseudonym or ""))


def valid_model_version(model_version: str) -> bool:
    return bool(_SHA256_HEX.fullmatch(model_version or ""))


@dataclass(frozen=True)
class HospitalContribution:
    """One hospital's measured contribution to one model version."""

    pseudonym: str
    share: float  # for payment: negative Shapley floored at 0, renormalised
    shapley: float | None  # raw value, for rankings and statements
    shapley_se: float | None
    loss_delta_tokens: float | None
    data_size: int | None


@dataclass(frozen=True)
class ContributionRecord:
    """A model version's contribution file, validated."""

    model_version: str
    method: str
    utility: str
    hospitals: tuple[HospitalContribution, ...]

    def shares(self) -> dict[str, float]:
        return {h.pseudonym: h.share for h in self.hospitals}


def _optional_number(entry: Mapping[str, Any], name: str, who: str) -> float | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidContribution(f"{who}: {name} must be a finite number or null")
    return float(value)


def parse_contribution(document: Any) -> ContributionRecord:
    """Validate a parsed ``<checkpoint stem>.contribution.json``; raise InvalidContribution."""
    if not isinstance(document, dict):
        raise InvalidContribution("a contribution file is a JSON object")
    if document.get("schema") != SCHEMA:
        raise InvalidContribution(f"schema must be {SCHEMA!r}")
    version = document.get("model_version")
    if not isinstance(version, str) or not valid_model_version(version):
        raise InvalidContribution("model_version must be a lowercase sha256 hex digest")
    method = document.get("method")
    # The measurement may add detail: "exact-shapley (16 coalitions)"; the base name is kept.
    base = next(
        (
            m
            for m in METHODS
            if isinstance(method, str) and (method == m or method.startswith(m + " "))
        ),
        None,
    )
    if base is None:
        raise InvalidContribution(f"method must be one of {METHODS}")
    utility = document.get("utility")
    if utility is None and base == "data-size (SecAgg+)":
        utility = "not measured: SecAgg+ hides each hospital's update; paid by data size"
    if not isinstance(utility, str) or not utility:
        raise InvalidContribution("utility must say what was measured")
    hospitals = document.get("hospitals")
    if not isinstance(hospitals, dict) or not hospitals:
        raise InvalidContribution("hospitals must be a non-empty object")
    parsed = []
    for pseudonym, entry in sorted(hospitals.items()):
        if not valid_pseudonym(pseudonym):
            raise InvalidContribution(f"bad hospital pseudonym {pseudonym!r}")
        if not isinstance(entry, dict):
            raise InvalidContribution(f"{pseudonym}: entry must be an object")
        share = _optional_number(entry, "share", pseudonym)
        if share is None or share < 0:
            raise InvalidContribution(f"{pseudonym}: share must be a number >= 0")
        size = entry.get("data_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise InvalidContribution(f"{pseudonym}: data_size must be a count or null")
        parsed.append(
            HospitalContribution(
                pseudonym=pseudonym,
                share=share,
                shapley=_optional_number(entry, "shapley", pseudonym),
                shapley_se=_optional_number(entry, "shapley_se", pseudonym),
                loss_delta_tokens=_optional_number(entry, "loss_delta_tokens", pseudonym),
                data_size=size,
            )
        )
    total = math.fsum(h.share for h in parsed)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise InvalidContribution(f"shares sum to {total}, not 1")
    return ContributionRecord(version, base, utility[:200], tuple(parsed))


@dataclass(frozen=True)
class Split:
    """Integer amounts per recipient plus what rounding down left over; sums to the total."""

    amounts: dict[str, int]
    rounding: int


def split_by_weight(total: int, weights: Mapping[str, Fraction | float | int]) -> Split:
    """Split ``total`` credits by ``weights`` (not all zero), each amount rounded down.

    Exact arithmetic (floats are taken at their exact binary value), so the same input always
    gives the same credits, and ``sum(amounts) + rounding == total`` with
    ``0 <= rounding < len(weights)``.
    """
    if total < 0:
        raise ValueError("cannot split a negative amount")
    exact = {key: Fraction(w) for key, w in weights.items()}
    if any(w < 0 for w in exact.values()):
        raise ValueError("weights must be >= 0")
    whole = sum(exact.values(), Fraction(0))
    if whole <= 0:
        raise ValueError("weights must not all be zero")
    amounts = {key: math.floor(total * w / whole) for key, w in sorted(exact.items())}
    return Split(amounts, total - sum(amounts.values()))


def _postings(source: str, total: int, split: Split, account_of: Any) -> list[Posting]:
    postings = [Posting(source, -total)]
    postings += [Posting(account_of(k), amt) for k, amt in split.amounts.items() if amt]
    if split.rounding:
        postings.append(Posting(ROYALTY_ROUNDING, split.rounding))
    return postings


def payout_split(pool: int, shares: Mapping[str, float]) -> Split:
    """A pool split by shares taken to :data:`SHARE_DECIMALS` decimal places (so that a share
    written as 0.3 pays 30 % exactly, not its binary float's 0.29999...)."""
    scale = 10**SHARE_DECIMALS
    return split_by_weight(pool, {k: Fraction(round(v * scale), scale) for k, v in shares.items()})


def payout_postings(model_version: str, pool: int, shares: Mapping[str, float]) -> list[Posting]:
    """Empty a version's pool (``pool`` > 0 credits) into its hospitals' accounts by share."""
    if pool <= 0:
        raise ValueError("nothing to pay out")
    return _postings(
        pool_account(model_version), pool, payout_split(pool, shares), hospital_account
    )


def case_fee_postings(model_version: str, fee: int) -> list[Posting]:
    """The fee of one diagnosed case, owed by the clinic, into its model version's pool."""
    if fee <= 0:
        raise ValueError("fee must be positive")
    return [Posting(CLINIC_FEES, -fee), Posting(pool_account(model_version), fee)]


@dataclass(frozen=True)
class Sale:
    """One purchase of the data set as read from the chain (``marketplace.ocean.sales``)."""

    chain_id: int
    block_hash: str
    log_index: int
    block_number: int
    tx_hash: str
    sold_at: datetime
    ocean_wei: int  # the publisher's proceeds, fees excluded


def ocean_to_credits(ocean_wei: int, credits_per_ocean: int) -> int:
    """Credits for OCEAN proceeds at the configured fixed rate, rounded down."""
    if ocean_wei < 0 or credits_per_ocean < 0:
        raise ValueError("amounts must be >= 0")
    return ocean_wei * credits_per_ocean // ONE_OCEAN_WEI


def sale_postings(credits: int, rows_by_version: Mapping[str | None, int]) -> list[Posting]:
    """A sale's credits into the pools of the versions whose rows it contained, by row count.

    Rows without a version (``None``) and a sale of an empty release credit the
    :data:`UNATTRIBUTED` pool.
    """
    if credits <= 0:
        raise ValueError("credits must be positive")
    weights: dict[str, int] = {}
    for version, count in rows_by_version.items():
        if count > 0:
            key = version or UNATTRIBUTED
            weights[key] = weights.get(key, 0) + count
    if not weights:
        weights = {UNATTRIBUTED: 1}
    return _postings(OCEAN_SALES, credits, split_by_weight(credits, weights), pool_account)


def period_cutoff(now: datetime, epoch: datetime, length: timedelta) -> datetime | None:
    """End of the latest payout period completed at ``now`` (None before the first one ends).

    Periods are consecutive windows of ``length`` from ``epoch``; a payout pays what the pools
    held at that cutoff.
    """
    if length <= timedelta(0):
        raise ValueError("payout period must be positive")
    if now.tzinfo is None or epoch.tzinfo is None:
        raise ValueError("times must carry a timezone")
    completed = (now - epoch) // length
    if completed < 1:
        return None
    return epoch + completed * length


def rank_by_shapley(contributions: Sequence[HospitalContribution]) -> dict[str, int]:
    """Rank (1 = highest) by raw Shapley value, or by share when the method gives none."""

    def key(h: HospitalContribution) -> float:
        return h.shapley if h.shapley is not None else h.share

    ordered = sorted(contributions, key=lambda h: (-key(h), h.pseudonym))
    return {h.pseudonym: i + 1 for i, h in enumerate(ordered)}
