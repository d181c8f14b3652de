"""Mint, read and verify model passports on the project's chain (use cases over the adapter).

Minting is idempotent per checkpoint sha256: a checkpoint already in its lineage's passport is
not minted again; a new one becomes the lineage's next version, its parent the last one.
Verifying finds the entry whose ``checkpoint_sha256`` is the file's, among the passports the
expected owner created and still owns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from infra.settings import flag
from marketplace.ocean.chain import ChainUnavailable, GasRecord
from marketplace.ocean.passport import (
    Change,
    DocumentMismatch,
    DocumentStore,
    Lineage,
    PassportChain,
    PassportError,
    PassportNotFound,
)
from marketplace.ocean.settings import account, dev_key
from models.checkpoint import file_sha256
from models.passport.entry import EntryError, Parent, build, check_entry, expand, model_version

#: The model owner on the development chain: account 3 of the project's dev mnemonic.
DEV_OWNER_INDEX = 3


def dev_owner_key() -> str:
    return dev_key(DEV_OWNER_INDEX)


@dataclass(frozen=True)
class PassportSettings:
    """Where passports live and who writes them; the owner's key is a secret (env only)."""

    rpc_url: str = field(
        default="http://127.0.0.1:8545", metadata=flag("chain JSON-RPC URL", env="OCEAN_RPC_URL")
    )
    address_file: Path = field(
        default=Path("var/ocean/address.json"),
        metadata=flag("Ocean contract addresses (ocean-lib's format)", env="OCEAN_ADDRESS_FILE"),
    )
    network_name: str = field(
        default="development", metadata=flag("address file network entry", env="OCEAN_NETWORK")
    )
    documents_dir: Path = field(
        default=Path("var/ocean/passports"),
        metadata=flag(
            "folder of the passports' off-chain documents (served by the project)",
            env="PASSPORT_DOCUMENTS_DIR",
        ),
    )
    owner_key: str = field(
        default="",
        metadata=flag(
            "the model owner's private key, 0x-hex (default: dev account 3)",
            env="PASSPORT_OWNER_KEY",
            secret=True,
        ),
    )
    owner: str = field(
        default="",
        metadata=flag("the model owner's address whose passports count (default: the key's)"),
    )

    def __post_init__(self) -> None:
        if not self.owner_key:
            object.__setattr__(self, "owner_key", dev_owner_key())
        if not self.owner:
            object.__setattr__(self, "owner", account(self.owner_key).address)

    def chain(self) -> PassportChain:
        return PassportChain(self.rpc_url, self.address_file, self.network_name)

    def documents(self) -> DocumentStore:
        return DocumentStore(self.documents_dir)

    def wallet(self) -> LocalAccount:
        return account(self.owner_key)


@dataclass(frozen=True)
class Attestation:
    """A checkpoint's passport version: the answer to "which model made this?"."""

    passport_id: str
    lineage: str
    version: int
    checkpoint_sha256: str
    chain_id: int

    @property
    def model_version(self) -> str:
        return model_version(self.lineage, self.version)

    def to_json(self) -> dict[str, Any]:
        return {
            "passport_id": self.passport_id,
            "lineage": self.lineage,
            "version": self.version,
            "model_version": self.model_version,
            "checkpoint_sha256": self.checkpoint_sha256,
            "chain_id": self.chain_id,
        }


@dataclass(frozen=True)
class MintResult:
    attestation: Attestation
    #: False: the checkpoint already had its version (nothing was written)
    minted: bool
    gas: tuple[GasRecord, ...]
    seconds: float


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise EntryError(f"{path} does not exist") from exc
    except ValueError as exc:
        raise EntryError(f"{path} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise EntryError(f"{path} is not a JSON object")
    return value


def companion(checkpoint: Path, suffix: str) -> Path:
    """``models/lenet.pth`` -> ``models/lenet<suffix>`` (the training run's records)."""
    stem = Path(checkpoint).with_suffix("")
    return stem.with_name(stem.name + suffix)


def owned_lineages(chain: PassportChain, owner: str) -> list[Lineage]:
    """Passports ``owner`` created and still owns (a transferred NFT no longer speaks for it)."""
    return [
        lineage
        for lineage in chain.lineages(owner)
        if chain.owner(lineage.passport_id).lower() == owner.lower()
    ]


def mint(
    chain: PassportChain,
    documents: DocumentStore,
    owner: LocalAccount,
    checkpoint: Path,
    provenance: Mapping[str, Any],
    *,
    lineage: str,
    contribution: Mapping[str, Any] | None = None,
) -> MintResult:
    """Attest ``checkpoint`` as the next version of ``lineage`` (idempotent per sha256)."""
    started = time.perf_counter()
    sha = file_sha256(checkpoint)
    if provenance.get("checkpoint_sha256") != sha:
        raise EntryError(
            f"the provenance record describes checkpoint {provenance.get('checkpoint_sha256')}, "
            f"not {checkpoint} (sha256 {sha}): mint with the record its training run wrote"
        )
    gas: list[GasRecord] = []
    mine = [lin for lin in owned_lineages(chain, owner.address) if lin.name == lineage]
    if mine:
        passport = mine[0]
        entries = chain.entries(passport.passport_id)
    else:
        passport, created = chain.create_lineage(lineage, owner)
        gas.append(created)
        entries = []
    for entry in entries:
        if entry.get("checkpoint_sha256") == sha:
            found = Attestation(
                passport.passport_id, lineage, int(entry["version"]), sha, chain.chain_id
            )
            return MintResult(found, False, tuple(gas), time.perf_counter() - started)
    parent = None
    if entries:
        last = entries[-1]
        parent = Parent(int(last["version"]), str(last["checkpoint_sha256"]))
    _check_parent(provenance, parent, lineage)
    version = len(entries) + 1
    minted = build(
        provenance, lineage=lineage, version=version, parent=parent, contribution=contribution
    )
    documents.put(minted.document)  # first: an entry on chain must never lack its document
    gas.append(chain.write_entry(passport.passport_id, version, minted.entry, owner))
    attestation = Attestation(passport.passport_id, lineage, version, sha, chain.chain_id)
    return MintResult(attestation, True, tuple(gas), time.perf_counter() - started)


def _check_parent(provenance: Mapping[str, Any], parent: Parent | None, lineage: str) -> None:
    """A run that started from a checkpoint (an encrypted fine-tune's provenance names its
    ``parent``) may become only the next version of the lineage whose latest version that
    checkpoint is: its passport must not claim another model's history."""
    named = provenance.get("parent")
    if not isinstance(named, Mapping) or "sha256" not in named:
        return
    if parent is None:
        raise EntryError(
            f"this checkpoint was trained from {named['sha256'][:12]}, which has no version in "
            f"lineage {lineage!r}: mint its parent there first, or name the parent's lineage"
        )
    if parent.checkpoint_sha256 != named["sha256"]:
        raise EntryError(
            f"this checkpoint was trained from {named['sha256'][:12]}, but the latest version "
            f"of lineage {lineage!r} (v{parent.version}) is {parent.checkpoint_sha256[:12]}: "
            "a version's parent must be the checkpoint it was trained from"
        )


def find(chain: PassportChain, sha256: str, owner: str) -> Attestation | None:
    """The owner's passport version whose checkpoint is ``sha256``, or None."""
    for lineage in owned_lineages(chain, owner):
        for entry in chain.entries(lineage.passport_id):
            if entry.get("checkpoint_sha256") == sha256:
                return Attestation(
                    lineage.passport_id, lineage.name, int(entry["version"]), sha256, chain.chain_id
                )
    return None


class Unattested(RuntimeError):
    """The checkpoint may not be served: the message is one line, saying why and how to fix."""


def verify_checkpoint(
    settings: PassportSettings, checkpoint: Path, wait_s: float = 0.0
) -> Attestation:
    """The passport version attesting ``checkpoint``; Unattested (one line) otherwise.

    Waits up to ``wait_s`` for the chain and its contracts (a chain starting next to us).
    """
    sha = file_sha256(checkpoint)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            chain = settings.chain()
            break
        except (ChainUnavailable, PassportError) as exc:
            if time.monotonic() >= deadline:
                raise Unattested(
                    f"cannot check {checkpoint} against its passport: the chain at "
                    f"{settings.rpc_url} is unreachable or has no Ocean contracts ({exc}); start "
                    "the chain (scripts/run does), or pass --allow-unattested to serve an "
                    "unattested model knowingly"
                ) from exc
            time.sleep(1.0)
    try:
        found = find(chain, sha, settings.owner)
        lineages = [] if found else owned_lineages(chain, settings.owner)
    except ChainUnavailable as exc:
        raise Unattested(f"the chain at {settings.rpc_url} stopped answering ({exc})") from exc
    if found is not None:
        return found
    fix = (
        f"mint its passport (`python -m models.passport mint {checkpoint}`), restore the "
        "attested file, or pass --allow-unattested to serve an unattested model knowingly"
    )
    if lineages:
        names = ", ".join(f"{lin.name} ({lin.passport_id})" for lin in lineages)
        raise Unattested(
            f"{checkpoint} (sha256 {sha[:16]}…) matches no version of owner {settings.owner}'s "
            f"passports {names}: the file was changed or never attested; {fix}"
        )
    raise Unattested(
        f"no passport of owner {settings.owner} on chain {chain.chain_id} attests {checkpoint} "
        f"(sha256 {sha[:16]}…); {fix}"
    )


@dataclass(frozen=True)
class VersionView:
    """One version as a reader sees it: the chain's entry with the document's fields filled in."""

    version: int
    entry: dict[str, Any]  # as on chain
    full: dict[str, Any] | None  # expanded from the document (None: document unavailable)
    problem: str | None  # why ``full`` is None


def show(
    chain: PassportChain, documents: DocumentStore, passport_id: str
) -> tuple[Lineage, list[VersionView]]:
    """Every version of a passport, each checked against its document.

    A missing document leaves ``full`` None with the reason; a tampered one raises.
    """
    lineage = chain.lineage(passport_id)
    views = []
    for entry in chain.entries(lineage.passport_id):
        check_entry(entry)
        sha = str(entry["document"]["sha256"])
        try:
            document = documents.get(sha)
        except DocumentMismatch as exc:
            raise EntryError(str(exc)) from exc
        except PassportNotFound as exc:
            views.append(VersionView(int(entry["version"]), entry, None, str(exc)))
            continue
        views.append(VersionView(int(entry["version"]), entry, expand(entry, document), None))
    return lineage, views


def history(chain: PassportChain, passport_id: str) -> tuple[Lineage, list[Change]]:
    lineage = chain.lineage(passport_id)
    return lineage, chain.history(lineage.passport_id)
