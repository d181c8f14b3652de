"""Gas and time of model passports on the local chain: mint (new lineage), update (next version),
re-mint of the same checkpoint (no-op), and party 1's verification before serving.

    .venv/bin/python scripts/bench_passport.py [--lineages 3] [--out bench/passport.json]

Starts its own ganache and deploys Ocean's contracts in a temporary folder; mints copies of
models/lenet.pth (one byte changed per version, so each is a new checkpoint). Prints a
Markdown table for the README and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from marketplace.ocean.chain import connect, wallet  # noqa: E402
from marketplace.ocean.deploy import deploy_contracts  # noqa: E402
from marketplace.ocean.node import GanacheNode  # noqa: E402
from marketplace.ocean.settings import dev_key  # noqa: E402
from models.checkpoint import file_sha256  # noqa: E402
from models.passport.registry import PassportSettings, mint, verify_checkpoint  # noqa: E402


def checkpoint(work: Path, name: str, flip: int) -> tuple[Path, dict]:
    path = work / f"{name}.pth"
    data = bytearray((ROOT / "models" / "lenet.pth").read_bytes())
    data[-(flip + 1)] ^= 0x01
    path.write_bytes(bytes(data))
    provenance = json.loads((ROOT / "models" / "lenet.provenance.json").read_text())
    provenance["checkpoint_sha256"] = file_sha256(path)
    return path, provenance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lineages", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "passport.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-passport-"))
    node = GanacheNode(db_path=work / "chain")
    node.start()
    rows: dict[str, list[dict]] = {"mint": [], "update": [], "re-mint": [], "verify": []}
    try:
        deploy_contracts(connect(node.url), wallet(dev_key(0)), work / "address.json")
        settings = PassportSettings(
            rpc_url=node.url, address_file=work / "address.json", documents_dir=work / "docs"
        )
        for index in range(args.lineages):
            lineage = f"bench-{index}"
            for step, flip in (("mint", 2 * index), ("update", 2 * index + 1)):
                path, provenance = checkpoint(work, f"{lineage}-{step}", flip)
                chain = settings.chain()
                result = mint(
                    chain, settings.documents(), settings.wallet(), path, provenance,
                    lineage=lineage,
                )  # fmt: skip
                rows[step].append(
                    {"seconds": result.seconds, "gas": sum(g.gas_used for g in result.gas),
                     "transactions": len(result.gas),
                     "entry_bytes": len(json.dumps(chain.entry(
                         result.attestation.passport_id, result.attestation.version)))}
                )  # fmt: skip
            again = mint(
                settings.chain(), settings.documents(), settings.wallet(), path, provenance,
                lineage=lineage,
            )  # fmt: skip
            rows["re-mint"].append({"seconds": again.seconds, "gas": 0, "transactions": 0})
            started = time.perf_counter()
            verify_checkpoint(settings, path)
            rows["verify"].append(
                {"seconds": time.perf_counter() - started, "gas": 0, "transactions": 0}
            )
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    summary = {
        step: {
            "median_seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "gas": sorted({r["gas"] for r in runs}),
            "transactions": runs[0]["transactions"],
            **({"entry_bytes": runs[0]["entry_bytes"]} if "entry_bytes" in runs[0] else {}),
        }
        for step, runs in rows.items()
    }
    record = {"lineages": args.lineages, "load_1min": round(load, 1), "steps": summary,
              "runs": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"| step ({args.lineages} lineages, ganache, load {load:.1f}) | transactions | gas | "
          "median time |")  # fmt: skip
    print("|---|---|---|---|")
    names = {
        "mint": "mint: new passport NFT + entry v1",
        "update": "update: entry v2 on the same NFT",
        "re-mint": "same checkpoint again (no-op)",
        "verify": "party 1's check before serving",
    }
    for step, figures in summary.items():
        gas = ", ".join(f"{g:,}" for g in figures["gas"])
        print(f"| {names[step]} | {figures['transactions']} | {gas} | "
              f"{figures['median_seconds']:.2f} s |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
