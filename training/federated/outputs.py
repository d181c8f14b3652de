"""What a federated run leaves on the model owner's disk, in the same shape as central training.

``<stem>.pth`` (served unchanged by the predictor), ``<stem>.metrics.json``,
``<stem>.curves.png`` (per-round eval figures), ``<stem>.reliability.png``,
``<stem>.provenance.json``, and ``<stem>.updates/`` — every hospital's per-round update,
weight and metrics as ``round-NNN/<hospital>.npz`` (absent under SecAgg+, where the model
owner never sees one), with their sha256 listed in the provenance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.provenance import OutputPaths, output_paths  # noqa: E402


@dataclass(frozen=True)
class FederatedPaths:
    outputs: OutputPaths
    updates: Path

    @staticmethod
    def for_checkpoint(checkpoint: Path) -> FederatedPaths:
        outputs = output_paths(Path(checkpoint))
        stem = outputs.checkpoint.with_suffix("")
        return FederatedPaths(outputs, stem.with_name(stem.name + ".updates"))


def save_arrays(path: Path, arrays: Sequence[np.ndarray], **meta: float | int | str) -> str:
    """Write arrays (+ scalar metadata) as ``.npz`` atomically; return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    payload = {f"a{i:03d}": np.asarray(a) for i, a in enumerate(arrays)}
    payload.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    np.savez(buffer, **payload)  # type: ignore[arg-type]
    data = buffer.getvalue()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def load_arrays(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Inverse of :func:`save_arrays`: the arrays in order and the metadata."""
    with np.load(path) as data:
        arrays = [data[k] for k in sorted(data.files) if k.startswith("a")]
        meta = {k[5:]: data[k].item() for k in data.files if k.startswith("meta_")}
    return arrays, meta


def plot_rounds(rounds: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Eval AUC and loss of the global model after each round."""
    x = [r["round"] for r in rounds]
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_auc.plot(x, [r["eval"]["auc"] for r in rounds], "-o", label="eval AUC")
    ax_auc.plot(x, [r["eval"]["accuracy"] for r in rounds], "--s", label="eval accuracy")
    ax_loss.plot(x, [r["eval"]["nll"] for r in rounds], "-o", label="eval NLL (T = 1)")
    for ax, name in ((ax_auc, "AUC / accuracy"), (ax_loss, "cross-entropy loss")):
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
