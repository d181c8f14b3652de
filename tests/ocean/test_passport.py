"""Model passports on the real local chain (ganache + Ocean's contracts from the fixtures)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from infra.net import free_port
from marketplace.ocean.chain import ChainUnavailable
from marketplace.ocean.passport import (
    DocumentMismatch,
    PassportChain,
    PassportNotFound,
    WriteRefused,
    canonical,
)
from marketplace.ocean.settings import account, dev_key
from models.checkpoint import file_sha256
from models.passport import entry as passport_entry
from models.passport.registry import (
    PassportSettings,
    Unattested,
    history,
    mint,
    show,
    verify_checkpoint,
)
from tests.ocean.conftest import Chain

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "models" / "lenet.pth"
SEED_PROVENANCE = ROOT / "models" / "lenet.provenance.json"


@pytest.fixture
def passports(chain: Chain, tmp_path: Path) -> PassportSettings:
    return PassportSettings(
        rpc_url=chain.node.url,
        address_file=chain.address_file,
        documents_dir=tmp_path / "ocean" / "passports",
    )


def checkpoint_copy(folder: Path, name: str, flip_byte_at: int | None = None) -> tuple[Path, dict]:
    """A copy of the seed checkpoint (one byte changed when asked) and its provenance record."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pth"
    shutil.copyfile(SEED, path)
    if flip_byte_at is not None:
        data = bytearray(path.read_bytes())
        data[flip_byte_at] ^= 0x01
        path.write_bytes(bytes(data))
    provenance = json.loads(SEED_PROVENANCE.read_text())
    provenance["checkpoint_sha256"] = file_sha256(path)
    (folder / f"{name}.provenance.json").write_text(json.dumps(provenance))
    return path, provenance


def lineage_name() -> str:
    return "test-" + uuid.uuid4().hex[:8]


def test_mint_then_show_every_field(passports: PassportSettings, tmp_path: Path) -> None:
    checkpoint, provenance = checkpoint_copy(tmp_path, "model")
    name = lineage_name()
    result = mint(
        passports.chain(),
        passports.documents(),
        passports.wallet(),
        checkpoint,
        provenance,
        lineage=name,
    )
    assert result.minted and result.attestation.version == 1
    assert [g.step for g in result.gas] == ["mint passport NFT", "write passport entry v1"]

    lineage, views = show(passports.chain(), passports.documents(), result.attestation.passport_id)
    assert lineage.name == name and lineage.creator == passports.owner
    assert len(views) == 1 and views[0].problem is None
    full = views[0].full
    assert full is not None
    assert set(passport_entry.FIELDS) <= set(full)
    assert full["schema"] == 1 and full["version"] == 1 and full["parent"] is None
    assert full["checkpoint_sha256"] == file_sha256(checkpoint)
    assert full["architecture"]["backbone"] == "lenet"
    assert full["training"]["type"] == "central"
    assert {d["role"] for d in full["datasets"]} == {"train", "eval"}
    assert all(len(d["sha256"]) == 64 and d["size"] > 0 for d in full["datasets"])
    assert set(full["metrics"]) >= {"auc", "sensitivity", "specificity", "ece"}
    assert any("generated data" in limit for limit in full["limits"])
    assert full["date"] == provenance["trained_at_utc"]
    # the on-chain entry names its document by hash; the document holds the provenance
    document = json.loads(passports.documents().get(views[0].entry["document"]["sha256"]))
    assert document["provenance"]["checkpoint_sha256"] == full["checkpoint_sha256"]


def test_minting_the_same_checkpoint_twice_writes_nothing(
    passports: PassportSettings, tmp_path: Path
) -> None:
    checkpoint, provenance = checkpoint_copy(tmp_path, "model")
    name = lineage_name()
    args = (passports.chain(), passports.documents(), passports.wallet(), checkpoint, provenance)
    first = mint(*args, lineage=name)
    again = mint(*args, lineage=name)
    assert not again.minted and again.gas == ()
    assert again.attestation == first.attestation
    chain = passports.chain()
    assert [lin.name for lin in chain.lineages(passports.owner)].count(name) == 1
    assert len(chain.entries(first.attestation.passport_id)) == 1


def test_history_lists_every_version_in_order(passports: PassportSettings, tmp_path: Path) -> None:
    name = lineage_name()
    shas = []
    for index in range(3):
        checkpoint, provenance = checkpoint_copy(tmp_path / str(index), "model", 200 + index)
        result = mint(
            passports.chain(),
            passports.documents(),
            passports.wallet(),
            checkpoint,
            provenance,
            lineage=name,
        )
        assert result.attestation.version == index + 1
        shas.append(file_sha256(checkpoint))
    lineage, changes = history(passports.chain(), result.attestation.passport_id)
    assert [c.version for c in changes] == [1, 2, 3]
    assert [c.value["checkpoint_sha256"] for c in changes if c.value] == shas
    assert [(c.block, c.log_index) for c in changes] == sorted(
        (c.block, c.log_index) for c in changes
    )
    _, views = show(passports.chain(), passports.documents(), lineage.passport_id)
    assert [v.entry["parent"] for v in views] == [
        None,
        {"version": 1, "checkpoint_sha256": shas[0]},
        {"version": 2, "checkpoint_sha256": shas[1]},
    ]


def test_a_non_owner_write_reverts(passports: PassportSettings, tmp_path: Path) -> None:
    checkpoint, provenance = checkpoint_copy(tmp_path, "model")
    result = mint(
        passports.chain(),
        passports.documents(),
        passports.wallet(),
        checkpoint,
        provenance,
        lineage=lineage_name(),
    )
    passport_id = result.attestation.passport_id
    chain = passports.chain()
    before = chain.entry(passport_id, 1)
    forged: dict[str, Any] = dict(before or {}) | {"checkpoint_sha256": "0" * 64}
    intruder = account(dev_key(1))
    with pytest.raises(WriteRefused, match="only the passport's owner"):
        chain.write_entry(passport_id, 1, forged, intruder)
    with pytest.raises(WriteRefused):
        chain.write_entry(passport_id, 2, forged, intruder)
    assert chain.entry(passport_id, 1) == before
    assert chain.entry(passport_id, 2) is None
    assert [c.version for c in chain.history(passport_id)] == [1]


def test_a_tampered_document_is_detected(passports: PassportSettings, tmp_path: Path) -> None:
    checkpoint, provenance = checkpoint_copy(tmp_path, "model")
    result = mint(
        passports.chain(),
        passports.documents(),
        passports.wallet(),
        checkpoint,
        provenance,
        lineage=lineage_name(),
    )
    entry = passports.chain().entry(result.attestation.passport_id, 1)
    assert entry is not None
    path = passports.documents().path(entry["document"]["sha256"])
    document = json.loads(path.read_text())
    document["entry"]["metrics"]["auc"] = 0.99  # a better figure than the one minted
    path.write_bytes(canonical(document))
    with pytest.raises(DocumentMismatch, match="changed after minting"):
        passports.documents().get(entry["document"]["sha256"])
    with pytest.raises(passport_entry.EntryError, match="does not match the hash on chain"):
        show(passports.chain(), passports.documents(), result.attestation.passport_id)
    # the same bytes handed over under their own hash: the chain's hash still refuses them
    with pytest.raises(passport_entry.EntryError, match="not the document that was minted"):
        passport_entry.expand(entry, canonical(document))


def test_verify_finds_the_file_and_refuses_one_changed_byte(
    passports: PassportSettings, tmp_path: Path
) -> None:
    checkpoint, provenance = checkpoint_copy(tmp_path, "model", 300)
    result = mint(
        passports.chain(),
        passports.documents(),
        passports.wallet(),
        checkpoint,
        provenance,
        lineage=lineage_name(),
    )
    assert verify_checkpoint(passports, checkpoint) == result.attestation
    data = bytearray(checkpoint.read_bytes())
    data[-10] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(Unattested, match="matches no version"):
        verify_checkpoint(passports, checkpoint)


def test_unknown_passport_and_chain_down_are_clear_errors(
    passports: PassportSettings, tmp_path: Path
) -> None:
    with pytest.raises(PassportNotFound, match="no model passport"):
        show(passports.chain(), passports.documents(), "0x" + "12" * 20)
    with pytest.raises(PassportNotFound, match="not a passport id"):
        passports.chain().lineage("not-an-address")
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailable):
        PassportChain(down, passports.address_file)
    checkpoint, _ = checkpoint_copy(tmp_path, "model")
    settings = PassportSettings(rpc_url=down, address_file=passports.address_file)
    with pytest.raises(Unattested, match="unreachable"):
        verify_checkpoint(settings, checkpoint)


@pytest.mark.slow  # seven fresh interpreters
def test_the_cli_mints_shows_verifies_and_lists_history(
    passports: PassportSettings, tmp_path: Path
) -> None:
    checkpoint, _ = checkpoint_copy(tmp_path, "cli-" + uuid.uuid4().hex[:6], 400)
    flags = [
        "--rpc-url", passports.rpc_url,
        "--address-file", str(passports.address_file),
        "--documents-dir", str(passports.documents_dir),
    ]  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "models.passport", *args, *flags],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )

    minted = cli("mint", str(checkpoint))
    assert minted.returncode == 0, minted.stderr
    record = json.loads(minted.stdout)
    assert record["minted"] is True and record["version"] == 1
    assert all(g["gas_used"] > 0 for g in record["gas"])
    again = cli("mint", str(checkpoint))
    assert json.loads(again.stdout)["minted"] is False
    shown = cli("show", record["passport_id"])
    assert shown.returncode == 0, shown.stderr
    assert "(checked)" in shown.stdout and checkpoint.stem in shown.stdout
    assert cli("verify", str(checkpoint)).returncode == 0
    assert "v1 checkpoint" in cli("history", str(checkpoint)).stdout
    missing = cli("show", "0x" + "34" * 20)
    assert missing.returncode == 1 and "no model passport" in missing.stderr
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    refused = cli("verify", str(checkpoint))
    assert refused.returncode == 1 and refused.stdout.startswith("NOT ATTESTED")


def test_both_modules_hash_the_same_bytes() -> None:
    value = {"b": [1, 2.5, None], "a": "é"}
    assert passport_entry.canonical(value) == canonical(value)


@pytest.mark.slow  # a fresh interpreter with ocean-lib
def test_training_mint_attests_the_checkpoint_idempotently(
    passports: PassportSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m training --mint`` and the federation's ``--mint`` run this helper."""
    from training.mint import mint_passport

    checkpoint, _ = checkpoint_copy(tmp_path, "trained-" + uuid.uuid4().hex[:6], 500)
    monkeypatch.setenv("CRYPTO_DOCTOR_OCEAN_RPC_URL", passports.rpc_url)
    monkeypatch.setenv("CRYPTO_DOCTOR_OCEAN_ADDRESS_FILE", str(passports.address_file))
    monkeypatch.setenv("CRYPTO_DOCTOR_PASSPORT_DOCUMENTS_DIR", str(passports.documents_dir))
    assert mint_passport(checkpoint) == 0
    assert mint_passport(checkpoint) == 0  # the same file: nothing new
    found = verify_checkpoint(passports, checkpoint)
    assert found.lineage == checkpoint.stem and found.version == 1
    assert len(passports.chain().entries(found.passport_id)) == 1


def test_the_readable_view_shows_checked_fields_and_flags_a_tampered_document(
    passports: PassportSettings, tmp_path: Path
) -> None:
    from marketplace.ocean.passport_view import read_passport, render
    from marketplace.ocean.settings import OceanSettings

    ocean = OceanSettings(
        rpc_url=passports.rpc_url,
        address_file=passports.address_file,
        data_dir=passports.documents_dir.parent,
    )
    checkpoint, provenance = checkpoint_copy(tmp_path, "model", 600)
    result = mint(
        passports.chain(),
        passports.documents(),
        passports.wallet(),
        checkpoint,
        provenance,
        lineage=lineage_name(),
    )
    passport_id = result.attestation.passport_id
    name, owner, pages = read_passport(ocean, passport_id)
    assert owner == passports.owner and [p.document_state for p in pages] == ["checked"]
    page = render(passport_id, name, owner, pages)
    assert "matches the hashes on chain" in page and "generated data" in page
    sha = pages[0].entry["document"]["sha256"]
    path = passports.documents().path(sha)
    path.write_bytes(path.read_bytes().replace(b'"auc":', b'"auc": ', 1))
    _, _, pages = read_passport(ocean, passport_id)
    assert [p.document_state for p in pages] == ["tampered"]
    assert "does NOT match" in render(passport_id, name, owner, pages)
    with pytest.raises(PassportNotFound):
        read_passport(ocean, "0x" + "56" * 20)


@pytest.mark.slow
def test_a_chain_restart_keeps_every_passport_and_its_history(tmp_path: Path) -> None:
    """The project's ganache keeps its state in its database folder (``--database.dbPath``)."""
    from marketplace.ocean.chain import connect, wallet
    from marketplace.ocean.deploy import deploy_contracts
    from marketplace.ocean.node import GanacheNode

    node = GanacheNode(db_path=tmp_path / "chain")
    node.start()
    try:
        deploy_contracts(connect(node.url), wallet(dev_key(0)), tmp_path / "address.json")
        settings = PassportSettings(
            rpc_url=node.url,
            address_file=tmp_path / "address.json",
            documents_dir=tmp_path / "passports",
        )
        checkpoint, provenance = checkpoint_copy(tmp_path, "model")
        minted = mint(
            settings.chain(),
            settings.documents(),
            settings.wallet(),
            checkpoint,
            provenance,
            lineage="restart",
        )
        node.stop()
        with pytest.raises(Unattested, match="unreachable"):
            verify_checkpoint(settings, checkpoint)  # down: fails closed
        node.start()  # same port, same database folder
        assert verify_checkpoint(settings, checkpoint) == minted.attestation
        _, changes = history(settings.chain(), minted.attestation.passport_id)
        assert [c.version for c in changes] == [1]
        again = mint(
            settings.chain(),
            settings.documents(),
            settings.wallet(),
            checkpoint,
            provenance,
            lineage="restart",
        )
        assert not again.minted
    finally:
        node.stop()


@pytest.mark.slow
def test_a_fine_tuned_candidate_is_the_next_version_of_its_parent_only(
    passports: PassportSettings, tmp_path: Path
) -> None:
    from models.passport.entry import EntryError
    from training.encrypted_finetune import main as finetune
    from training.synthetic import generate_dataset

    parent, parent_provenance = checkpoint_copy(tmp_path / "serving", "lenet")
    data = generate_dataset(tmp_path / "mri", seed=21, train=40, eval=100)
    for label in ("yes", "no"):  # settled cases, labelled as they are
        (tmp_path / "cases" / label).mkdir(parents=True)
        for path in sorted((data / "train" / label).iterdir())[:12]:
            shutil.copy(path, tmp_path / "cases" / label / path.name)
    out = tmp_path / "teaching" / "lenet.pth"
    code = finetune([
        "--checkpoint", str(parent), "--cases-dir", str(tmp_path / "cases"),
        "--owner-dir", str(data / "train"), "--eval-dir", str(data / "eval"),
        "--out", str(out), "--epochs", "1", "--resamples", "200",
    ])  # fmt: skip
    assert code in (0, 3)  # promoted or refused: either is a version its owner may mint
    candidate = json.loads(out.with_suffix(".provenance.json").read_text())
    wallet = (passports.chain(), passports.documents(), passports.wallet())

    alone = lineage_name()
    with pytest.raises(EntryError, match="has no version in lineage"):
        mint(*wallet, out, candidate, lineage=alone)
    other, other_provenance = checkpoint_copy(tmp_path / "other", "other", flip_byte_at=-1)
    mint(*wallet, other, other_provenance, lineage=alone)
    with pytest.raises(EntryError, match="must be the checkpoint it was trained from"):
        mint(*wallet, out, candidate, lineage=alone)
    assert len(passports.chain().entries(history_id(passports, alone))) == 1  # nothing written

    name = lineage_name()
    mint(*wallet, parent, parent_provenance, lineage=name)
    result = mint(*wallet, out, candidate, lineage=name)
    assert result.minted and result.attestation.version == 2
    _, views = show(passports.chain(), passports.documents(), result.attestation.passport_id)
    full = views[1].full
    assert full is not None and views[1].problem is None
    assert full["parent"]["version"] == 1
    assert full["parent"]["checkpoint_sha256"] == file_sha256(parent)
    assert full["training"]["type"] == "encrypted fine-tune"
    assert full["dp_epsilon"] == pytest.approx(
        candidate["differential_privacy"]["epsilon"], abs=1e-4
    )
    assert any("settled cases" in limit for limit in full["limits"])


def history_id(passports: PassportSettings, name: str) -> str:
    chain = passports.chain()
    return next(lin.passport_id for lin in chain.lineages(passports.owner) if lin.name == name)
