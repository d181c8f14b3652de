"""Anonymization of settled cases into research rows (no image, patient or doctor identifier).

Only coarse fields survive: the settlement *day*, the model backbone and label,
the confidence in 0.1-wide buckets, the final diagnosis, the panel size, the
fraction of reviewers who agreed with it, and whether the model found the image
unfamiliar (``yes``/``no``). The flag is rare, so it says something about the patient's
scan: it is a quasi-identifier, and the k-anonymous release groups on it by default. So is
the model version that predicted the case (``lenet v2``, its passport's name): a version
served for a few hours narrows a case down to those hours.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

#: ``model_version`` of a case predicted before model passports (issue 15).
UNKNOWN_VERSION = "unknown"
CSV_COLUMNS = (
    "day",
    "backbone",
    "model_label",
    "confidence_bucket",
    "diagnosis",
    "reviewers",
    "agreement",
    "unfamiliar",
    "model_version",
)


def confidence_bucket(confidence: float) -> str:
    """Bucket a probability into a 0.1-wide bin such as ``"0.8-0.9"`` (1.0 joins ``"0.9-1.0"``)."""
    if math.isnan(confidence) or not (0.0 <= confidence <= 1.0):
        raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
    # round() first so 0.7 (stored as 0.69999...) lands in its own bin.
    index = min(9, math.floor(round(confidence * 10, 9)))
    return f"{index / 10:.1f}-{(index + 1) / 10:.1f}"


@dataclass(frozen=True)
class ResearchRecord:
    """The public fields of one research row, in CSV column order."""

    day: date
    backbone: str
    model_label: str
    confidence_bucket: str
    diagnosis: str
    reviewers: int
    agreement: float
    unfamiliar: bool = False
    #: the model version's name on its passport ("lenet v2"); "unknown" before passports
    model_version: str = UNKNOWN_VERSION

    def as_csv_values(self) -> list[str]:
        return [
            self.day.isoformat(),
            self.backbone,
            self.model_label,
            self.confidence_bucket,
            self.diagnosis,
            str(self.reviewers),
            f"{self.agreement:.2f}",
            "yes" if self.unfamiliar else "no",
            self.model_version,
        ]


def anonymize(
    *,
    settled_at: datetime,
    backbone: str,
    model_label: str,
    confidence: float,
    diagnosis: str,
    reviewers: int,
    agreement: float,
    unfamiliar: bool = False,
    model_version: str | None = None,
) -> ResearchRecord:
    """Reduce a settled case to its research record (day in UTC, bucketed confidence)."""
    if settled_at.tzinfo is None:
        raise ValueError("settled_at must be timezone-aware")
    if reviewers <= 0 or not (0.0 <= agreement <= 1.0):
        raise ValueError("need reviewers > 0 and agreement in [0, 1]")
    return ResearchRecord(
        day=settled_at.astimezone(UTC).date(),
        backbone=backbone,
        model_label=model_label,
        confidence_bucket=confidence_bucket(confidence),
        diagnosis=diagnosis,
        reviewers=reviewers,
        agreement=round(agreement, 2),
        unfamiliar=unfamiliar,
        model_version=model_version or UNKNOWN_VERSION,
    )


def csv_text(rows: Iterable[Sequence[str]], *, header: bool) -> str:
    """The one research-CSV dialect: RFC 4180 quoting, '\\n' line ends, optional header.

    The doctor service's live stream and the Ocean publisher's hashed file both render here,
    so every consumer sees identical bytes for identical rows.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()
