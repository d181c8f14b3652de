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
    ax.set_ylim(-0.8, 10.9)
    ax.axis("off")
    ax.text(0.2, 10.7, "crypto-doctor: processes and data flow", fontsize=15, fontweight="bold",
            va="top")  # fmt: skip
    ax.text(0.2, 10.3, "python -m predictor (the supervisor) starts and restarts every process "
            "in the dashed frame.\nThree organisations, three stores: the clinic and the "
            "marketplace share nothing and talk only by signed messages.",
            fontsize=9, va="top", color="#444444")  # fmt: skip
    ax.add_patch(
        FancyBboxPatch((2.95, 0.35), 13.0, 9.1, boxstyle="round,pad=0.02,rounding_size=0.2",
                       facecolor="none", edgecolor="#777777", linestyle="--", linewidth=1.2)
    )  # fmt: skip
    ax.text(3.1, 9.35, "supervised processes (python -m predictor)", fontsize=8.5,
            color="#555555", va="top")  # fmt: skip

    patient = box(ax, 0.2, 7.3, 2.4, 1.4, "Patient", ["curl / app", "holds patient token"], USER)
    doctors = box(ax, 0.2, 4.3, 2.4, 1.5, "Doctors", ["browser page or API", "Bearer API token"],
                  USER)  # fmt: skip
    researcher = box(ax, 0.2, 0.8, 2.4, 1.6, "Researcher",
                     ["python -m marketplace", ".researcher buy|download", "own wallet key"],
                     USER)  # fmt: skip

    party0 = box(ax, 3.3, 6.6, 3.7, 2.6, "Party 0 - the clinic",
                 ["patient API :8080 (+ POST /messages)", "POST /image, GET /case/{id}",
                  "GET /image/{id}: seated doctors", "holds: images, patient tokens",
                  "learns: label + confidence"])  # fmt: skip
    clinic_db = box(ax, 3.3, 4.1, 3.0, 1.6, "Clinic store", ["cases, token hashes,",
                    "seats, diagnoses,", "outbox + inbox"], STORE)  # fmt: skip
    party1 = box(ax, 9.3, 7.4, 3.5, 1.8, "Party 1 - model owner",
                 ["holds: checkpoint only", "no store, no HTTP", "learns: batch sizes only"])  # fmt: skip
    market = box(ax, 9.0, 4.2, 3.9, 2.4, "Marketplace :8081",
                 ["pool, claims, POST /decision,", "page, POST /messages",
                  "signs image links (own key)", "learns: label + confidence, votes"])  # fmt: skip
    market_db = box(ax, 6.5, 2.3, 2.9, 1.5, "Marketplace store", ["doctors, votes, ledger,",
                    "research rows, outbox + inbox"], STORE)  # fmt: skip
    dealer = box(ax, 13.3, 7.3, 2.5, 1.4, "TTP dealer (opt.)", ["--provider TTP, rank 2",
                 "Beaver triples only"], PROCESS)  # fmt: skip
    publisher = box(ax, 9.9, 0.9, 2.9, 1.5, "Ocean publisher", ["every N s: settled rows",
                    "k-anonymous CSV + digest"])  # fmt: skip
    download = box(ax, 3.3, 0.7, 3.0, 1.6, "Download service :8082", ["/asset, /initialize,",
                   "POST /download: order", "verified on chain"])  # fmt: skip
    chain = box(ax, 13.2, 0.7, 2.6, 3.0, "Chain", ["ganache :8545, or a real", "RPC URL (not supervised)",
                "Ocean V4 contracts:", "data NFT + digest,", "datatoken, exchange"], CHAIN)  # fmt: skip
    deploy = box(ax, 13.3, 4.4, 2.5, 1.2, "ocean.deploy", ["idempotent, once per", "chain start"],
                 PROCESS, bold=True)  # fmt: skip
    csv = box(ax, 7.0, 0.5, 2.0, 1.1, "CSV file", ["var/ocean/"], STORE)

    arrow(ax, anchor(patient, "right"), anchor(party0, "left", 0.7), "JPEG/PNG slice; later\nstatus + diagnosis", both=True)  # fmt: skip
    arrow(ax, anchor(party0, "right", 0.8), anchor(party1, "left", 0.5),
          "MPC over torch.distributed (gloo):\nsecret shares of image and weights,\nonly d opened to party 0",
          both=True, color="#1f5fa8", offset=(0, 0.25))  # fmt: skip
    arrow(ax, anchor(party0, "right", 0.3), anchor(market, "left", 0.75),
          "signed messages (outbox -> inbox):\ncase.opened ->  <- seat.granted, case.settled",
          both=True, color="#b35900", offset=(0, 0.05), at=0.45)  # fmt: skip
    arrow(ax, anchor(doctors, "right", 0.35), anchor(market, "left", 0.2), "claim, sealed vote", offset=(0.2, 0.05), at=0.8)  # fmt: skip
    arrow(ax, anchor(doctors, "right", 0.75), anchor(party0, "bottom", 0.1), "image: link signed by the\nmarketplace, seated doctors only", offset=(-0.1, -0.1), rad=-0.15, at=0.35)  # fmt: skip
    arrow(ax, anchor(party0, "bottom", 0.6), anchor(clinic_db, "top", 0.6), "", both=True)
    arrow(ax, anchor(market, "bottom", 0.2), anchor(market_db, "top", 0.8), "", both=True)
    arrow(ax, anchor(dealer, "left"), anchor(party1, "right", 0.6), "triples", style="--", both=False)  # fmt: skip
    arrow(ax, anchor(market_db, "right", 0.3), anchor(publisher, "left", 0.7), "unpublished rows;\nmark published", both=True, offset=(0.1, 0.05))  # fmt: skip
    arrow(ax, anchor(publisher, "right", 0.5), anchor(chain, "left", 0.6), "setData(digest)", color="#6a2c91")  # fmt: skip
    arrow(ax, anchor(publisher, "left", 0.2), anchor(csv, "right", 0.5), "atomic write", offset=(0.1, -0.05))  # fmt: skip
    arrow(ax, anchor(csv, "left"), anchor(download, "right", 0.3), "CSV if digest\nmatches", offset=(0, 0.05))  # fmt: skip
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
