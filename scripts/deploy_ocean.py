"""Kept for old command lines only: `python -m marketplace.ocean.deploy` is the command.

python scripts/deploy_ocean.py [flags of python -m marketplace.ocean.deploy]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marketplace.ocean.deploy import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
