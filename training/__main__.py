"""``python -m training``: train, calibrate and evaluate; see ``training.settings``."""

from __future__ import annotations

import logging
import sys

from training.data import DatasetError
from training.mint import mint_passport
from training.run import run_training
from training.settings import parse_train_settings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = parse_train_settings(argv)
    try:
        run = run_training(
            settings,
            command=["python", "-m", "training", *(sys.argv[1:] if argv is None else argv)],
        )
    except (DatasetError, ValueError) as exc:
        logging.getLogger("training").error("%s", exc)
        return 2
    except ImportError as exc:  # --validate-encrypted without its CrypTen side installed
        logging.getLogger("training").error("encrypted validation unavailable: %s", exc)
        return 1
    if settings.mint:
        return mint_passport(run.paths.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
