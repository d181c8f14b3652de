"""Party 1's check before serving: its checkpoint's sha256 against the owner's passport on chain.

Fails closed: a file no passport version attests, no passport at all, or a chain that does
not answer within ``passport_wait_s`` means party 1 does not serve. It logs one line (why,
and how to fix it) and exits with :data:`EXIT_UNATTESTED`, which the supervisor treats as
fatal: restarting would only refuse again. ``--allow-unattested`` serves the file anyway and
announces it as unattested, so every prediction says so to its patient and its doctors.

What this proves, and what it does not: the passport is the model owner's own signed
statement about its own model; party 1 (the model owner) checks its own file against it.
Party 0 computes on secret shares of weights it never sees, so it takes the announced
version on party 1's word.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from models.passport.registry import PassportSettings, Unattested, verify_checkpoint
from predictor.settings import PredictorSettings

log = logging.getLogger("predictor.passport")

#: sysexits' EX_CONFIG: a configuration problem a restart cannot cure.
EXIT_UNATTESTED = 78


def passport_settings(s: PredictorSettings) -> PassportSettings:
    """Where the served model's passport is read (and, with --passport-mint, written)."""
    return PassportSettings(
        rpc_url=s.resolved_rpc_url,
        address_file=s.ocean_address_file,
        documents_dir=s.ocean_data_dir / "passports",
        owner_key=s.passport_owner_key,
        owner=s.passport_owner,
    )


def announced_passport(s: PredictorSettings, path: Path | None = None) -> dict[str, Any]:
    """What party 1 tells party 0 about the version it serves (``path``, default
    ``--model-path``); raises Unattested to refuse."""
    path = path or s.resolved_model_path
    try:
        found = verify_checkpoint(passport_settings(s), path, wait_s=s.passport_wait_s)
    except Unattested as exc:
        if not s.allow_unattested:
            raise
        log.warning("serving %s UNATTESTED (--allow-unattested): %s", path, exc)
        return {
            "model_version": f"{s.backbone} (unattested)",
            "passport_id": None,
            "attested": False,
        }
    log.info(
        "%s is %s, attested by passport %s on chain %d",
        path,
        found.model_version,
        found.passport_id,
        found.chain_id,
    )
    return {
        "model_version": found.model_version,
        "passport_id": found.passport_id,
        "attested": True,
    }
