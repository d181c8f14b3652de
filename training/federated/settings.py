"""Settings of each ``python -m training.federated`` command: one frozen dataclass each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from infra.settings import flag, nested
from training.federated.hospital import SIMULATIONS
from training.federated.protocol import RunConfig

DEFAULT_STATE = Path("var/federation/model-owner")
MINT_HELP = (
    "after the run, mint the checkpoint's passport on chain (the main venv's python -m "
    "models.passport mint; chain and owner key from CRYPTO_DOCTOR_OCEAN_* / _PASSPORT_OWNER_KEY)"
)


@dataclass(frozen=True)
class CertificatesSettings:
    state: Path = field(default=DEFAULT_STATE, metadata=flag("the model owner's federation folder"))
    hosts: tuple[str, ...] = field(
        default=("127.0.0.1", "localhost"),
        metadata=flag(
            "names and IP addresses hospitals use to reach the SuperLink (comma-separated)"
        ),
    )


@dataclass(frozen=True)
class KeySettings:
    key: Path = field(
        default=Path("var/federation/hospital/node.key"),
        metadata=flag("the hospital's private key file to create (public key: same name, .pub)"),
    )


@dataclass(frozen=True)
class ServeSettings:
    state: Path = field(default=DEFAULT_STATE, metadata=flag("the model owner's federation folder"))
    host: str = field(default="127.0.0.1", metadata=flag("address the SuperLink listens on"))
    port: int = field(
        default=9092, metadata=flag("port of the SuperLink (Fleet, Control, Runtime APIs)")
    )


@dataclass(frozen=True)
class RegisterSettings:
    state: Path = field(default=DEFAULT_STATE, metadata=flag("the model owner's federation folder"))
    public_key: Path | None = field(default=None, metadata=flag("a hospital's .pub file"))
    pseudonym: str = field(
        default="", metadata=flag("the hospital's name in provenance; default: h- + key hash")
    )
    superlink: str = field(default="127.0.0.1:9092", metadata=flag("the SuperLink's host:port"))


@dataclass(frozen=True)
class NodeSettings:
    data_dir: Path | None = field(default=None, metadata=flag("the hospital's yes/ no/ folder"))
    key: Path = field(
        default=Path("var/federation/hospital/node.key"),
        metadata=flag("the hospital's private key"),
    )
    superlink: str = field(default="127.0.0.1:9092", metadata=flag("the SuperLink's host:port"))
    root_cert: Path = field(
        default=Path("var/federation/hospital/ca.pem"),
        metadata=flag("the federation CA certificate the model owner gave you"),
    )
    clientappio_port: int = field(
        default=9094, metadata=flag("local port between the SuperNode and its ClientApp")
    )
    simulate: str = field(
        default="none",
        metadata=flag(f"benchmarks/tests only: misbehave as {'|'.join(SIMULATIONS)}"),
    )


@dataclass(frozen=True)
class RunSettings:
    state: Path = field(default=DEFAULT_STATE, metadata=flag("the model owner's federation folder"))
    config: RunConfig = field(default_factory=RunConfig, metadata=nested(""))
    timeout_s: float = field(default=7200.0, metadata=flag("give up on the run after this long"))
    mint: bool = field(default=False, metadata=flag(MINT_HELP))


@dataclass(frozen=True)
class LocalSettings:
    """A whole federation on this machine: generated hospitals, real processes."""

    workdir: Path = field(default=Path("var/federation/local"), metadata=flag("working folder"))
    hospitals: int = field(default=4, metadata=flag("number of hospitals (SuperNodes)"))
    images_per_hospital: int = field(default=300, metadata=flag("generated images per hospital"))
    eval_images: int = field(default=2000, metadata=flag("the model owner's eval set size"))
    data_seed: int = field(default=7, metadata=flag("generator seed"))
    mint: bool = field(default=False, metadata=flag(MINT_HELP))
    config: RunConfig = field(default_factory=RunConfig, metadata=nested(""))


@dataclass(frozen=True)
class ContributionSettings:
    checkpoint: Path = field(
        default=Path("models/federated-lenet.pth"), metadata=flag("a federated checkpoint")
    )
    permutations: int = field(
        default=200, metadata=flag("Monte Carlo permutations (used above 6 hospitals)")
    )
    seed: int = field(default=0, metadata=flag("Monte Carlo seed"))
