"""``python -m models.passport mint|show|verify|history``: model passports on the project's chain.

    mint CHECKPOINT      attest a checkpoint as its lineage's next version (idempotent); reads
                         <stem>.provenance.json (and <stem>.contribution.json when present)
    show PASSPORT        every version of a passport (id = 0x address, or a checkpoint path),
                         each checked against its off-chain document
    verify CHECKPOINT    recompute the file's sha256 and find it on chain; exit 1 if absent
    history PASSPORT     every change (DataChanged event) of a passport, in chain order

The model owner's key comes from CRYPTO_DOCTOR_PASSPORT_OWNER_KEY (default: dev account 3).
Exit codes: 0 done, 1 not attested / refused / tampered, 2 bad input, 3 chain unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from infra.settings import add_flags, settings_from
from marketplace.ocean.chain import ChainUnavailable
from marketplace.ocean.passport import PassportError, PassportNotFound, WriteRefused
from models.checkpoint import file_sha256
from models.passport.entry import EntryError
from models.passport.registry import (
    PassportSettings,
    Unattested,
    companion,
    find,
    history,
    mint,
    read_json,
    show,
    verify_checkpoint,
)

log = logging.getLogger("models.passport")


def _parser(command: str, target: str, help_text: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m models.passport {command}")
    parser.add_argument(target, help=help_text)
    add_flags(parser, PassportSettings)
    return parser


def _settings(args: argparse.Namespace) -> PassportSettings:
    return settings_from(PassportSettings, args)


def mint_command(argv: Sequence[str]) -> int:
    parser = _parser("mint", "checkpoint", "the .pth file to attest")
    parser.add_argument("--provenance", type=Path, help="default <stem>.provenance.json")
    parser.add_argument("--contribution", type=Path, help="default <stem>.contribution.json")
    parser.add_argument("--lineage", default="", help="passport name; default the file's stem")
    args = parser.parse_args(argv)
    settings = _settings(args)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise EntryError(f"{checkpoint} is not a file")
    provenance = read_json(args.provenance or companion(checkpoint, ".provenance.json"))
    contribution_path = args.contribution or companion(checkpoint, ".contribution.json")
    contribution = read_json(contribution_path) if contribution_path.exists() else None
    result = mint(
        settings.chain(),
        settings.documents(),
        settings.wallet(),
        checkpoint,
        provenance,
        lineage=args.lineage or checkpoint.stem,
        contribution=contribution,
    )
    print(
        json.dumps(
            {
                **result.attestation.to_json(),
                "minted": result.minted,
                "seconds": round(result.seconds, 3),
                "gas": [asdict(g) for g in result.gas],
            },
            indent=2,
        )
    )
    return 0


def _passport_id(settings: PassportSettings, target: str) -> str:
    """A passport id as given, or the passport attesting a checkpoint file."""
    if target.startswith("0x"):
        return target
    path = Path(target)
    if not path.is_file():
        raise PassportNotFound(f"{target} is neither a passport id (0x…) nor a checkpoint file")
    found = find(settings.chain(), file_sha256(path), settings.owner)
    if found is None:
        raise PassportNotFound(f"no passport of owner {settings.owner} attests {path}")
    return found.passport_id


def show_command(argv: Sequence[str]) -> int:
    parser = _parser("show", "passport", "passport id (0x…) or a checkpoint path")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    settings = _settings(args)
    chain = settings.chain()
    lineage, views = show(chain, settings.documents(), _passport_id(settings, args.passport))
    owner = chain.owner(lineage.passport_id)
    if args.json:
        print(
            json.dumps(
                {
                    "passport_id": lineage.passport_id,
                    "lineage": lineage.name,
                    "owner": owner,
                    "chain_id": chain.chain_id,
                    "versions": [
                        {"on_chain": v.entry, "full": v.full, "document_problem": v.problem}
                        for v in views
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(f"passport {lineage.passport_id} — lineage {lineage.name}, owner {owner}, "
          f"chain {chain.chain_id}, {len(views)} version(s)")  # fmt: skip
    for view in views:
        e = view.full or view.entry
        print(f"\n  v{view.version}  {e['date']}  checkpoint sha256 {e['checkpoint_sha256']}")
        print(f"    architecture {json.dumps(e['architecture'])}")
        print(f"    training     {json.dumps(e['training'])}")
        print(f"    metrics      {json.dumps(e['metrics'])}")
        print(f"    parent       {json.dumps(e['parent'])}")
        if view.full is None:
            print(f"    (document unavailable: {view.problem})")
            continue
        for d in e["datasets"]:
            print(f"    data         {json.dumps(d)}")
        for limit in e["limits"]:
            print(f"    limit        {limit}")
        print(f"    DP epsilon   {e['dp_epsilon']}; contributor shares {e['contributor_shares']}")
        print(f"    document     {view.entry['document']['sha256']} (checked)")
    return 0


def verify_command(argv: Sequence[str]) -> int:
    parser = _parser("verify", "checkpoint", "the .pth file to check")
    args = parser.parse_args(argv)
    settings = _settings(args)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise EntryError(f"{checkpoint} is not a file")
    try:
        found = verify_checkpoint(settings, checkpoint)
    except Unattested as exc:
        print(f"NOT ATTESTED: {exc}")
        return 1
    print(
        f"attested: {checkpoint} is {found.model_version} "
        f"(passport {found.passport_id}, chain {found.chain_id}, sha256 {found.checkpoint_sha256})"
    )
    return 0


def history_command(argv: Sequence[str]) -> int:
    parser = _parser("history", "passport", "passport id (0x…) or a checkpoint path")
    args = parser.parse_args(argv)
    settings = _settings(args)
    chain = settings.chain()
    lineage, changes = history(chain, _passport_id(settings, args.passport))
    print(f"passport {lineage.passport_id} — lineage {lineage.name}: {len(changes)} change(s)")
    for change in changes:
        when = datetime.fromtimestamp(chain.block_time(change.block), UTC).isoformat()
        what = (
            f"v{change.version} checkpoint {change.value.get('checkpoint_sha256')}"
            if change.version is not None and change.value is not None
            else "other data"
        )
        print(f"  block {change.block:>6}  {when}  {what}  tx {change.tx_hash}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "mint": mint_command,
    "show": show_command,
    "verify": verify_command,
    "history": history_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return COMMANDS[args[0]](args[1:])
    except ChainUnavailable as exc:
        print(
            f"error: the chain does not answer ({exc}): start it (scripts/run does)",
            file=sys.stderr,
        )
        return 3
    except (WriteRefused, PassportNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EntryError as exc:  # tampered document, bad provenance
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (PassportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
