"""``python -m predictor``: both parties (supervised); ``--rank N``: one party of a multi-host run."""

import logging
import sys

from predictor.party import run_party
from predictor.settings import parse_predictor_settings
from predictor.supervisor import Supervisor


def main() -> int:
    settings = parse_predictor_settings()
    if settings.rank is not None:
        return run_party(settings)
    logging.basicConfig(
        level=logging.INFO, format="[launcher] %(asctime)s %(levelname)s: %(message)s"
    )
    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
