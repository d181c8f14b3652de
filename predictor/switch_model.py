"""Serve another checkpoint without a restart: the model owner's choice, read by party 1.

    python -m predictor.switch_model runs/teaching/3/lenet.pth [--serving-file F]

writes party 1's serving file (``--serving-file``, default ``var/party1/serving.json``): the
checkpoint it is to serve instead of ``--model-path``. Nothing else changes hands: party 1
reads the file at each of party 0's heartbeats (every ``--heartbeat-s``, busy or idle), and
when it names another checkpoint that loads and that a passport attests (the same check as
at start, ``predictor.model_passport``), both parties set up the new model between two
batches: party 1 announces its card and shares its weights, as at start. Queued cases wait
in the clinic's store meanwhile and run on the new model; a batch already running finishes
on the old one. A checkpoint that fails the checks is not served: party 1 logs why and keeps
the model it serves; it tries again once the checkpoint or the serving file changes (run
the command again, e.g. after minting the checkpoint's passport). A restarted party 1
starts with the serving file's checkpoint when it passes the checks, else ``--model-path``.

The command checks what it can before writing (the file exists and loads as a checkpoint);
the passport is party 1's check, on its chain. It prints the request as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.checkpoint import Checkpoint, file_sha256, load_checkpoint

log = logging.getLogger("predictor.switch_model")
DEFAULT_SERVING_FILE = Path("var/party1/serving.json")
SCHEMA = "crypto-doctor/serving/1"


def write_request(serving_file: Path, checkpoint: Path) -> dict[str, Any]:
    """Point party 1 at ``checkpoint`` (atomically: a half-written file is never read)."""
    load_checkpoint(checkpoint)  # raises on a missing or unreadable file
    request = {
        "schema": SCHEMA,
        "model_path": str(checkpoint.resolve()),
        "sha256": file_sha256(checkpoint),
        "requested_at_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    serving_file.parent.mkdir(parents=True, exist_ok=True)
    staging = serving_file.with_name(serving_file.name + ".partial")
    staging.write_text(json.dumps(request, indent=2) + "\n")
    staging.replace(serving_file)
    return request


def requested_path(serving_file: Path) -> Path | None:
    """The checkpoint the serving file names, or None (no file, or not one of ours: logged)."""
    try:
        request = json.loads(serving_file.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("ignoring the serving file %s: %s", serving_file, exc)
        return None
    if not isinstance(request, dict) or request.get("schema") != SCHEMA:
        log.error("ignoring the serving file %s: not a %s record", serving_file, SCHEMA)
        return None
    return Path(str(request.get("model_path")))


@dataclass(frozen=True)
class Switch:
    """A checkpoint that passed party 1's checks, ready to be served."""

    path: Path
    checkpoint: Checkpoint
    sha256: str
    passport: dict[str, Any]


class ServingChoice:
    """Party 1's side: what the serving file asks for, checked; each changed file tried once.

    ``attest(path)`` returns the passport announcement or raises (``Unattested``, or any
    error) to refuse."""

    def __init__(self, serving_file: Path, attest: Callable[[Path], dict[str, Any]]) -> None:
        self.serving_file = serving_file
        self.attest = attest
        self._tried: tuple[Path, tuple[int, int], tuple[int, int]] | None = None

    def wanted(self, serving: Path) -> Switch | None:
        """The checkpoint to serve instead of ``serving``, once it passes the checks."""
        path = requested_path(self.serving_file)
        if path is None or path.resolve() == serving.resolve():
            return None
        key = (path, _stamp(self.serving_file), _stamp(path))
        if key == self._tried:
            return None  # refused already; neither the request nor the file changed since
        self._tried = key
        try:
            checkpoint = load_checkpoint(path)
            passport = self.attest(path)
            sha = file_sha256(path)
        except Exception as exc:  # noqa: BLE001 - every refusal keeps the model being served
            log.error("not switching to %s: %s; still serving %s", path, exc, serving)
            return None
        return Switch(path, checkpoint, sha, passport)


def _stamp(path: Path) -> tuple[int, int]:
    """(modification time, size), or (-1, -1) for a file that cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_mtime_ns, stat.st_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.switch_model",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("checkpoint", type=Path, help="the checkpoint party 1 is to serve")
    parser.add_argument(
        "--serving-file",
        type=Path,
        default=Path(os.environ.get("CRYPTO_DOCTOR_SERVING_FILE") or DEFAULT_SERVING_FILE),
        help=f"party 1's serving file (default {DEFAULT_SERVING_FILE}, or "
        "CRYPTO_DOCTOR_SERVING_FILE)",
    )
    args = parser.parse_args(argv)
    try:
        request = write_request(args.serving_file, args.checkpoint)
    except Exception as exc:  # noqa: BLE001 - whatever loading it raised, said in one line
        print(f"not a checkpoint party 1 could serve: {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**request, "serving_file": str(args.serving_file)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
