"""A model version's passport entry, schema 1, built from its training run's records (pure).

The entry is what the model owner states about one checkpoint: its sha256, architecture,
training (central or federated, rounds, strategy), data sets by content hash and size (per
hospital, as each claimed, when federated), eval and calibration figures, flagged limits,
DP epsilon and contributor shares where there are any, its parent version and its date.

Fields whose canonical JSON is longer than :data:`INLINE_LIMIT` bytes go on chain as
``{"sha256": ..., "bytes": ...}``; the whole entry, with every field in full, and the run's
provenance record form the off-chain *document*, whose hash is on chain too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA = 1
#: On-chain bytes cost about 720 gas each: longer fields are stored as their hash.
INLINE_LIMIT = 256
#: Every schema-1 field, in the order a reader sees them.
FIELDS = (
    "schema",
    "lineage",
    "version",
    "checkpoint_sha256",
    "architecture",
    "training",
    "datasets",
    "metrics",
    "limits",
    "dp_epsilon",
    "contributor_shares",
    "parent",
    "date",
)
GENERATED_DATA_LIMIT = "trained and evaluated on generated data only (training.synthetic)"
FEDERATED_LIMIT = (
    "federated: each hospital's data size and content hash are as the hospital claimed them; "
    "the model owner cannot check them"
)


class EntryError(ValueError):
    """A provenance record or a document that cannot make or match a schema-1 entry."""


def canonical(value: Any) -> bytes:
    """The byte form every passport hash is taken of (same as the chain adapter's)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Parent:
    version: int
    checkpoint_sha256: str


@dataclass(frozen=True)
class Minted:
    """What goes on chain (``entry``) and what the project serves (``document``, its bytes)."""

    entry: dict[str, Any]
    document: bytes


def _number(value: Any) -> float | None:
    """A figure from a provenance record: plain, or the point value of a bootstrap interval."""
    if isinstance(value, Mapping):
        value = value.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(float(value), 4)


def _size(record: Mapping[str, Any] | None) -> int | None:
    if not record:
        return None
    if "size" in record:
        return int(record["size"])
    counts = record.get("class_counts")
    return int(sum(counts.values())) if isinstance(counts, Mapping) else None


def _dataset(role: str, record: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any] | None:
    if not record or not record.get("fingerprint_sha256"):
        return None
    return {"role": role, **extra, "sha256": record["fingerprint_sha256"], "size": _size(record)}


def _generated(provenance: Mapping[str, Any]) -> bool:
    """True when the eval data (and so the model's every figure) came from the generator."""
    for key in ("training_data", "eval_data"):
        manifest = (provenance.get(key) or {}).get("generator_manifest") or {}
        if manifest.get("generator") == "training.synthetic":
            return True
    return False


def dp_epsilon(provenance: Mapping[str, Any]) -> float | None:
    """The epsilon spent: central training's accountant, or the largest any hospital reported
    (federated, each hospital's own accountant), else the run's target; None without DP."""
    dp = provenance.get("differential_privacy")
    if not isinstance(dp, Mapping) or not dp:
        return None
    if "epsilon" in dp:
        return _number(dp["epsilon"])
    hospitals = dp.get("per_hospital") or {}
    spent = [_number(h.get("epsilon")) for h in hospitals.values() if isinstance(h, Mapping)]
    known = [e for e in spent if e is not None]
    return max(known) if known else _number(dp.get("target_epsilon"))


def full_fields(
    provenance: Mapping[str, Any], contribution: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The entry's content fields (all but schema, lineage, version, parent), in full."""
    try:
        sha = str(provenance["checkpoint_sha256"])
        architecture = dict(provenance["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise EntryError(f"not a crypto-doctor provenance record (missing {exc})") from exc
    metrics = provenance.get("metrics") or {}
    training = provenance.get("training") or {}
    federated = training.get("type") == "federated"
    limits = list(metrics.get("limits") or provenance.get("limits") or ())
    if federated:
        evaluation = metrics.get("eval") or {}
        training_record = {
            "type": "federated",
            "strategy": training.get("strategy"),
            "rounds": training.get("rounds"),
            "secure_aggregation": training.get("secure_aggregation"),
            "local_epochs": training.get("local_epochs"),
        }
        datasets = [
            _dataset(
                "hospital",
                h.get("claimed_data"),
                hospital=h.get("pseudonym"),
                claimed=True,
            )
            for h in provenance.get("hospitals") or ()
            if h.get("status", "included") == "included"
        ]
        limits.append(FEDERATED_LIMIT)
    else:
        evaluation = metrics.get("eval_at_operating_point") or metrics
        training_record = {
            "type": training.get("type", "central"),
            "epochs": metrics.get("epochs"),
            "best_epoch": metrics.get("best_epoch"),
        }
        datasets = [_dataset("train", provenance.get("training_data"))]
    datasets.append(_dataset("eval", provenance.get("eval_data")))
    if _generated(provenance) and not any("generated data" in str(limit) for limit in limits):
        limits.insert(0, GENERATED_DATA_LIMIT)  # records from before the run listed its limits
    figures = {
        "auc": _number(evaluation.get("auc")),
        "sensitivity": _number(evaluation.get("sensitivity")),
        "specificity": _number(evaluation.get("specificity")),
        "ece": _number(
            evaluation.get("ece", evaluation.get("ece_after", metrics.get("ece_after")))
        ),
        "temperature": _number(provenance.get("temperature")),
    }
    if figures["sensitivity"] is None and isinstance(metrics.get("confusion_matrix"), list):
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]  # rows true, columns predicted
        figures["sensitivity"] = round(tp / (tp + fn), 4) if tp + fn else None
        figures["specificity"] = round(tn / (tn + fp), 4) if tn + fp else None
    shares = None
    if contribution and isinstance(contribution.get("hospitals"), Mapping):
        shares = {
            str(name): _number(record.get("share"))
            for name, record in contribution["hospitals"].items()
        }
    return {
        "checkpoint_sha256": sha,
        "architecture": architecture,
        "training": training_record,
        "datasets": [d for d in datasets if d is not None],
        "metrics": figures,
        "limits": limits,
        "dp_epsilon": dp_epsilon(provenance),
        "contributor_shares": shares,
        "date": provenance.get("trained_at_utc"),
    }


def build(
    provenance: Mapping[str, Any],
    *,
    lineage: str,
    version: int,
    parent: Parent | None,
    contribution: Mapping[str, Any] | None = None,
) -> Minted:
    """The on-chain entry (large fields hashed) and the document that holds them in full."""
    if version < 1:
        raise EntryError("versions start at 1")
    full = {
        "schema": SCHEMA,
        "lineage": lineage,
        "version": version,
        **full_fields(provenance, contribution),
        "parent": None
        if parent is None
        else {"version": parent.version, "checkpoint_sha256": parent.checkpoint_sha256},
    }
    full = {name: full[name] for name in FIELDS}
    document = canonical({"schema": SCHEMA, "entry": full, "provenance": dict(provenance)})
    entry: dict[str, Any] = {}
    for name, value in full.items():
        data = canonical(value)
        entry[name] = (
            value if len(data) <= INLINE_LIMIT else {"sha256": sha256_hex(data), "bytes": len(data)}
        )
    entry["document"] = {"sha256": sha256_hex(document), "bytes": len(document)}
    return Minted(entry, document)


def expand(entry: Mapping[str, Any], document: bytes) -> dict[str, Any]:
    """The entry with every hashed field filled in from its document, each hash checked.

    Raises EntryError when the document is not the one the entry names (a tampered copy).
    """
    named = entry.get("document") or {}
    if sha256_hex(document) != named.get("sha256"):
        raise EntryError(
            f"the passport document hashes to {sha256_hex(document)}, the chain says "
            f"{named.get('sha256')}: it is not the document that was minted"
        )
    try:
        full = json.loads(document)["entry"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EntryError(f"the passport document is malformed ({exc})") from exc
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = entry.get(name)
        if isinstance(value, Mapping) and is_hashed(value):
            if sha256_hex(canonical(full.get(name))) != value["sha256"]:
                raise EntryError(f"the document's {name!r} does not match its hash on chain")
            out[name] = full.get(name)
        else:
            if canonical(full.get(name)) != canonical(value):
                raise EntryError(f"the document's {name!r} differs from the chain's")
            out[name] = value
    return out


def is_hashed(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == {"sha256", "bytes"}


def check_entry(entry: Mapping[str, Any]) -> None:
    """Raise EntryError unless ``entry`` is a schema-1 passport entry."""
    if entry.get("schema") != SCHEMA:
        raise EntryError(f"passport entry schema {entry.get('schema')!r}, this reads {SCHEMA}")
    missing = [name for name in (*FIELDS, "document") if name not in entry]
    if missing:
        raise EntryError(f"passport entry lacks {', '.join(missing)}")


def model_version(lineage: str, version: int) -> str:
    """How people read a version: ``lenet v2``."""
    return f"{lineage} v{version}"
