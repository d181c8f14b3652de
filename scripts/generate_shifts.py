"""Write the shifted image sets the unfamiliarity detector is chosen and judged on.

    python scripts/generate_shifts.py --out data/shifts --shift near --split dev --count 300
    python scripts/generate_shifts.py --out data/shifts --shift all --split all --count 300

``dev`` sets choose the detector and its layer; ``heldout`` sets are only ever reported.
See ``training/synthetic/shifts.py`` for what each shift contains.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synthetic.shifts import SHIFTS, SPLITS, generate_shift_set  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/shifts"))
    parser.add_argument("--shift", choices=[*SHIFTS, "all"], default="all")
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="all")
    parser.add_argument("--count", type=int, default=300, help="images per shift and split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.count <= 0:
        parser.error("--count must be > 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("generate_shifts")
    shifts = SHIFTS if args.shift == "all" else (args.shift,)
    splits = SPLITS if args.split == "all" else (args.split,)
    for split in splits:
        for shift in shifts:
            out = generate_shift_set(
                args.out, shift, split=split, count=args.count, seed=args.seed,
                progress=not args.quiet,
            )  # fmt: skip
            log.info("wrote %d %s images to %s", args.count, shift, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
