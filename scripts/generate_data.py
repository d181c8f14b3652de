"""Write a labelled brain-MRI slice data set in the Kaggle layout, offline and by seed.

    python scripts/generate_data.py --out data/mri --train 600 --eval 200 --seed 0

See ``training/synthetic/difficulty.py`` for what ``--difficulty`` changes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synthetic import PRESETS, generate_dataset, preset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/mri"))
    parser.add_argument("--train", type=int, default=600, help="images in train/")
    parser.add_argument("--eval", type=int, default=200, help="images in eval/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", choices=sorted(PRESETS), default="standard")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.train < 0 or args.eval < 0:
        parser.error("--train and --eval must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = generate_dataset(
        args.out,
        seed=args.seed,
        train=args.train,
        eval=args.eval,
        difficulty=preset(args.difficulty),
        difficulty_name=args.difficulty,
        progress=not args.quiet,
    )
    logging.getLogger("generate_data").info("wrote %s", root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
