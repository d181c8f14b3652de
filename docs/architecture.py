"""Draw docs/architecture.png: crypto-doctor's processes and data flow (reproducible).

    .venv/bin/python docs/architecture.py

Boxes are OS processes (grouped by who runs them) or stores; arrows are data flows, labelled
with what crosses them. Plain matplotlib so it needs nothing beyond the project's venv.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "architecture.png"

PROCESS = "#dbe9f6"
STORE = "#fdf1d6"
USER = "#e3f4e1"
CHAIN = "#efe1f5"


def box(ax, x, y, w, h, title, lines=(), color=PROCESS, bold=True) -> dict:
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=color, edgecolor="#333333", linewidth=1.2,
        )
    )  # fmt: skip
    ax.text(x + w / 2, y + h - 0.22, title, ha="center", va="top", fontsize=10.5,
            fontweight="bold" if bold else "normal")  # fmt: skip
    for i, line in enumerate(lines):
        ax.text(x + w / 2, y + h - 0.58 - i * 0.3, line, ha="center", va="top", fontsize=8.2)
    return {"x": x, "y": y, "w": w, "h": h}


def anchor(b: dict, side: str, frac: float = 0.5) -> tuple[float, float]:
    x, y, w, h = b["x"], b["y"], b["w"], b["h"]
    return {
        "left": (x, y + h * frac),
        "right": (x + w, y + h * frac),
        "top": (x + w * frac, y + h),
        "bottom": (x + w * frac, y),
    }[side]


def arrow(
    ax, a, b, label="", both=False, style="-", color="#222222", offset=(0, 0.12), rad=0.0, at=0.5
):
    ax.add_patch(
        FancyArrowPatch(
            a, b, arrowstyle="<|-|>" if both else "-|>", mutation_scale=13,
            linewidth=1.3, linestyle=style, color=color,
            connectionstyle=f"arc3,rad={rad}",
        )
    )  # fmt: skip
    if label:
        mx = a[0] + (b[0] - a[0]) * at + offset[0]
        my = a[1] + (b[1] - a[1]) * at + offset[1]
        ax.text(mx, my, label, ha="center", va="bottom", fontsize=7.8, color=color,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.2, "alpha": 0.9})  # fmt: skip


def draw() -> None:
    fig, ax = plt.subplots(figsize=(16, 10.5))
    ax.set_xlim(0, 16)
    ax.set_ylim(-0.8, 10.5)
    ax.axis("off")
    ax.text(0.2, 10.25, "crypto-doctor: processes and data flow", fontsize=15, fontweight="bold",
            va="top")  # fmt: skip
    ax.text(0.2, 9.85, "python -m predictor (the supervisor) starts and restarts every process "
            "in the dashed frame; parties restart together, Ocean children one by one.",
            fontsize=9, va="top", color="#444444")  # fmt: skip
    ax.add_patch(
        FancyBboxPatch((2.95, 0.35), 13.0, 9.1, boxstyle="round,pad=0.02,rounding_size=0.2",
                       facecolor="none", edgecolor="#777777", linestyle="--", linewidth=1.2)
    )  # fmt: skip
    ax.text(
        3.1,
        9.35,
        "supervised processes (python -m predictor)",
        fontsize=8.5,
        color="#555555",
        va="top",
    )

    patient = box(ax, 0.2, 7.3, 2.4, 1.4, "Patient", ["curl / app", "holds patient token"], USER)
    doctors = box(ax, 0.2, 4.3, 2.4, 1.5, "Doctors", ["browser page or API", "Bearer API token"],
                  USER)  # fmt: skip
    researcher = box(ax, 0.2, 0.8, 2.4, 1.6, "Researcher",
                     ["python -m marketplace", ".researcher buy|download", "own wallet key"],
                     USER)  # fmt: skip

    party0 = box(ax, 3.3, 6.6, 3.6, 2.5, "Party 0 - patient side",
                 ["patient API :8080", "POST /image, GET /case/{id}", "GET /image/{id} (signed link)",
                  "holds: images (plaintext)", "learns: label + confidence"])  # fmt: skip
    party1 = box(ax, 9.0, 6.6, 3.6, 2.5, "Party 1 - model side",
                 ["doctor service :8081", "pool, claims, POST /decision", "page, GET /decisions.csv",
                  "holds: checkpoint (plaintext)", "learns: batch sizes only"])  # fmt: skip
    db = box(ax, 6.0, 3.9, 3.6, 1.9, "Database", ["SQLite (WAL) or PostgreSQL",
             "cases, votes + receipts,", "double-entry ledger, research rows"], STORE)  # fmt: skip
    dealer = box(ax, 13.3, 7.3, 2.5, 1.4, "TTP dealer (opt.)", ["--provider TTP, rank 2",
                 "Beaver triples only"], PROCESS)  # fmt: skip
    publisher = box(ax, 9.4, 1.9, 3.2, 1.5, "Ocean publisher", ["every N s: settled rows",
                    "k-anonymous CSV + digest"])  # fmt: skip
    download = box(ax, 3.3, 0.7, 3.3, 1.6, "Download service :8082", ["/asset, /initialize,",
                   "POST /download: order", "verified on chain"])  # fmt: skip
    chain = box(ax, 13.2, 0.7, 2.6, 3.0, "Chain", ["ganache :8545, or a real", "RPC URL (not supervised)",
                "Ocean V4 contracts:", "data NFT + digest,", "datatoken, exchange"], CHAIN)  # fmt: skip
    deploy = box(ax, 13.3, 4.4, 2.5, 1.2, "ocean.deploy", ["idempotent, once per", "chain start"],
                 PROCESS, bold=True)  # fmt: skip
    csv = box(ax, 7.0, 0.7, 2.0, 1.1, "CSV file", ["var/ocean/"], STORE)

    arrow(ax, anchor(patient, "right"), anchor(party0, "left", 0.7), "JPEG/PNG slice; later\nstatus + diagnosis", both=True)  # fmt: skip
    arrow(ax, anchor(party0, "right", 0.55), anchor(party1, "left", 0.55),
          "MPC over torch.distributed (gloo):\nsecret shares of image and weights,\nonly d = logit difference opened to party 0",
          both=True, color="#1f5fa8", offset=(0, 0.18))  # fmt: skip
    arrow(ax, anchor(doctors, "right", 0.7), anchor(party1, "left", 0.15), "claim, sealed vote", offset=(0, -0.05), at=0.8)  # fmt: skip
    arrow(ax, anchor(doctors, "right", 0.35), anchor(party0, "bottom", 0.25), "image via HMAC-signed,\nshort-lived link", offset=(-0.2, -0.55), rad=0.15)  # fmt: skip
    arrow(ax, anchor(party0, "bottom", 0.7), anchor(db, "top", 0.25), "case, prediction,\nescrow", offset=(-0.55, -0.1))  # fmt: skip
    arrow(ax, anchor(party1, "bottom", 0.3), anchor(db, "top", 0.75), "votes, settlement,\npayout, research row", offset=(0.65, -0.1))  # fmt: skip
    arrow(ax, anchor(dealer, "left"), anchor(party1, "right", 0.75), "triples", style="--", both=False)  # fmt: skip
    arrow(ax, anchor(db, "bottom", 0.8), anchor(publisher, "top", 0.3), "unpublished rows;\nmark published", both=True, offset=(0.2, -0.1))  # fmt: skip
    arrow(ax, anchor(publisher, "right", 0.5), anchor(chain, "left", 0.7), "setData(digest)", color="#6a2c91")  # fmt: skip
    arrow(ax, anchor(publisher, "bottom", 0.2), anchor(csv, "right", 0.5), "atomic write", offset=(0.1, -0.2))  # fmt: skip
    arrow(ax, anchor(csv, "left"), anchor(download, "right", 0.3), "CSV if digest matches", offset=(0, 0.05))  # fmt: skip
    arrow(ax, anchor(deploy, "bottom"), anchor(chain, "top", 0.5), "contracts", color="#6a2c91")  # fmt: skip
    arrow(ax, anchor(download, "bottom", 0.8), anchor(chain, "bottom", 0.3), "read order tx, data NFT", color="#6a2c91", offset=(0, -0.25), rad=0.08, at=0.62)  # fmt: skip
    arrow(ax, anchor(researcher, "right", 0.65), anchor(download, "left", 0.55), "signed download;\nCSV back", both=True)  # fmt: skip
    arrow(ax, anchor(researcher, "bottom", 0.5), (14.5, 0.7), "buy datatoken with OCEAN, start order", color="#6a2c91", offset=(0, -0.95), rad=0.12, at=0.3)  # fmt: skip

    legend = [(USER, "user / client"), (PROCESS, "process"), (STORE, "store"), (CHAIN, "chain")]
    for i, (color, label) in enumerate(legend):
        ax.add_patch(FancyBboxPatch((13.3 + (i % 2) * 1.3, 9.6 - (i // 2) * 0.4), 0.3, 0.25,
                                    boxstyle="round,pad=0.01", facecolor=color, edgecolor="#333"))  # fmt: skip
        ax.text(13.7 + (i % 2) * 1.3, 9.72 - (i // 2) * 0.4, label, fontsize=8, va="center")
    fig.savefig(OUT, dpi=110, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    draw()
