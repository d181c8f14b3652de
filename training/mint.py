"""``--mint``: attest a freshly trained checkpoint on chain, as its lineage's next version.

Minting runs ``python -m models.passport mint CHECKPOINT`` in a child process with the main
venv's interpreter: the federation runs in ``.venv-fed``, which has no ocean-lib, and training
itself needs no chain. The child reads the chain's settings and the model owner's key from
the environment (``CRYPTO_DOCTOR_OCEAN_RPC_URL``, ``CRYPTO_DOCTOR_OCEAN_ADDRESS_FILE``,
``CRYPTO_DOCTOR_PASSPORT_OWNER_KEY``); it is idempotent per checkpoint sha256.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("training.mint")
ROOT = Path(__file__).resolve().parents[1]
MAIN_VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def passport_python() -> str:
    """The interpreter that has ocean-lib: the main venv's, else this one."""
    return str(MAIN_VENV_PYTHON) if MAIN_VENV_PYTHON.exists() else sys.executable


def mint_passport(checkpoint: Path, timeout_s: float = 600.0) -> int:
    """Mint ``checkpoint``'s passport; the child's exit code (0: minted or already there)."""
    command = [passport_python(), "-m", "models.passport", "mint", str(checkpoint)]
    log.info("minting the passport of %s: %s", checkpoint, " ".join(command[1:]))
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log.error("minting the passport of %s took over %.0f s", checkpoint, timeout_s)
        return 1
    if done.returncode != 0:
        log.error(
            "the checkpoint is trained but its passport was not minted (exit %d); mint it "
            "later with `python -m models.passport mint %s`",
            done.returncode,
            checkpoint,
        )
    return done.returncode
