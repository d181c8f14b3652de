"""Where browser tests leave what a person may want to look at afterwards (screenshots):
``var/test-artifacts/`` in the checkout (gitignored), or ``$CRYPTO_DOCTOR_TEST_ARTIFACTS``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("CRYPTO_DOCTOR_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts"))


def screenshot(driver: Any, name: str) -> Path:
    """Save the browser's viewport as ``<name>.png`` under the artifacts folder."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
    return path
