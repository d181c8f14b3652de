"""The predictor's one settings object: CLI flags, with ``CRYPTO_DOCTOR_*`` env fallbacks."""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from models.mpc import PROVIDERS
from models.nets import BACKBONES

ENV_PREFIX = "CRYPTO_DOCTOR_"
DEFAULT_DB_URL = "sqlite:///var/crypto-doctor.sqlite3"


@dataclass(frozen=True)
class PredictorSettings:
    host: str = "127.0.0.1"
    patient_port: int = 8080
    doctor_port: int = 8081
    #: URL doctors' browsers use to reach party 0 (signed image links point here).
    patient_public_url: str = ""
    backbone: str = "lenet"
    model_path: Path | None = None
    db_url: str = DEFAULT_DB_URL
    #: Party 0's private folder for patients' images (party 1 never reads it).
    data_dir: Path = Path("var/party0")
    #: None: launch both parties here and supervise them; 0/1/2: run that one party.
    rank: int | None = None
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    provider: str = "TFP"
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    #: Shared HMAC secret of the two parties for doctors' image links (hex).
    link_secret_hex: str = ""
    link_ttl_s: int = 300
    num_threads: int = 1
    #: Seconds of silence after which party 0 pings party 1 to keep the MPC channel alive.
    heartbeat_s: float = 20.0
    #: Party 1 appends every control message it receives from party 0 here (an audit trail).
    control_log: Path | None = None
    # The Ocean side, run by the supervisor next to the parties (never by a single --rank).
    #: False: parties only (tests that need no chain; a deployment whose Ocean side runs apart).
    ocean: bool = True
    #: External JSON-RPC URL of the chain; empty: start the project's ganache on ``chain_port``.
    ocean_rpc_url: str = ""
    chain_port: int = 8545
    #: Port of the research-data download endpoint (stands in for Ocean's Provider).
    ocean_port: int = 8082
    ocean_data_dir: Path = Path("var/ocean")
    #: Seconds between two publisher runs (settled cases -> k-anonymous CSV -> digest on chain).
    publish_every_s: float = 10.0
    #: k of the k-anonymity rule; 0: the Ocean side's own default (CRYPTO_DOCTOR_OCEAN_K or 5).
    ocean_k: int = 0
    #: Deploy Ocean's contracts if the address file does not point at live ones (dev chains).
    ocean_deploy: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}")
        if self.rank not in (None, 0, 1, 2):
            raise ValueError("rank must be 0, 1 or 2 (the TTP dealer)")
        if not 1 <= self.max_batch <= 64:
            raise ValueError("max_batch must be between 1 and 64")
        if self.ocean_k < 0 or self.publish_every_s <= 0:
            raise ValueError("ocean_k must be >= 0 and publish_every_s positive")

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path or Path("models") / f"{self.backbone}.pth"

    @property
    def resolved_patient_url(self) -> str:
        return self.patient_public_url or f"http://{self.host}:{self.patient_port}"

    @property
    def resolved_rpc_url(self) -> str:
        return self.ocean_rpc_url or f"http://127.0.0.1:{self.chain_port}"

    @property
    def ocean_service_url(self) -> str:
        return f"http://{self.host}:{self.ocean_port}"

    @property
    def ocean_address_file(self) -> Path:
        return self.ocean_data_dir / "address.json"

    @property
    def link_secret(self) -> bytes:
        return bytes.fromhex(self.link_secret_hex)

    def with_link_secret(self) -> PredictorSettings:
        """Same settings, with a fresh random link secret if none was configured."""
        return (
            self if self.link_secret_hex else replace(self, link_secret_hex=secrets.token_hex(32))
        )


_FLAGS: dict[str, tuple[type, str]] = {
    "host": (str, "interface both services listen on"),
    "patient_port": (int, "party 0's patient API port"),
    "doctor_port": (int, "party 1's doctor API and page port"),
    "patient_public_url": (str, "public URL of the patient API (for doctors' image links)"),
    "backbone": (str, f"one of {', '.join(BACKBONES)}"),
    "model_path": (Path, "checkpoint party 1 serves (default models/<backbone>.pth)"),
    "db_url": (str, "SQLAlchemy URL of the case database"),
    "data_dir": (Path, "party 0's private image folder"),
    "rank": (int, "run only this party (0 patient side, 1 model side, 2 TTP dealer)"),
    "master_addr": (str, "address of party 0's torch.distributed rendezvous"),
    "master_port": (int, "port of the rendezvous"),
    "provider": (str, "Beaver-triple provider: TFP (party 0 deals) or TTP (dealer process)"),
    "max_batch": (int, "largest batch one encrypted forward pass takes"),
    "batch_wait_ms": (float, "how long to wait for more images before running a batch"),
    "max_upload_bytes": (int, "largest accepted upload"),
    "link_secret_hex": (str, "HMAC secret shared by the parties (hex); random if unset"),
    "num_threads": (int, "torch threads per party"),
    "heartbeat_s": (float, "seconds of MPC silence before party 0 pings party 1"),
    "control_log": (Path, "party 1 appends each control message from party 0 here (audit)"),
    "ocean_rpc_url": (str, "external chain JSON-RPC URL (default: start ganache on --chain-port)"),
    "chain_port": (int, "port of the local ganache chain the supervisor starts"),
    "ocean_port": (int, "port of the research-data download endpoint"),
    "ocean_data_dir": (Path, "Ocean side's folder (chain, address file, CSV, publisher state)"),
    "publish_every_s": (float, "seconds between two publisher runs"),
    "ocean_k": (int, "k of the k-anonymity rule (0: CRYPTO_DOCTOR_OCEAN_K or 5)"),
}

#: On/off switches: ``--no-<name>`` turns one off; env ``CRYPTO_DOCTOR_<NAME>=0`` too.
_SWITCHES: dict[str, str] = {
    "ocean": "do not start the Ocean side (chain, deployment, publisher, download service)",
    "ocean_deploy": "never deploy Ocean's contracts (a real chain: give the address file)",
}
_FALSE = ("0", "false", "no", "off")


def settings_to_argv(settings: PredictorSettings) -> list[str]:
    """Flags that rebuild ``settings`` in a child process."""
    argv = []
    for name in _FLAGS:
        value = getattr(settings, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    for name in _SWITCHES:
        if not getattr(settings, name):
            argv.append("--no-" + name.replace("_", "-"))
    return argv


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> PredictorSettings:
    """Flags win over ``CRYPTO_DOCTOR_<NAME>`` environment variables, which win over defaults."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="Run crypto-doctor: two MPC parties (patient API :8080, doctor API :8081) "
        "and the Ocean side (chain :8545, research downloads :8082).",
    )
    for name, (kind, help_text) in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)
    for name, help_text in _SWITCHES.items():
        parser.add_argument(
            "--no-" + name.replace("_", "-"), dest=name, action="store_false", default=None,
            help=help_text,
        )  # fmt: skip
    args = parser.parse_args(argv)
    values = {}
    for name, (kind, _) in _FLAGS.items():
        value = getattr(args, name)
        if value is None and (ENV_PREFIX + name.upper()) in env:
            value = kind(env[ENV_PREFIX + name.upper()])
        if value is not None:
            values[name] = value
    for name in _SWITCHES:
        value = getattr(args, name)
        if value is None and (ENV_PREFIX + name.upper()) in env:
            value = env[ENV_PREFIX + name.upper()].strip().lower() not in _FALSE
        if value is not None:
            values[name] = value
    try:
        return PredictorSettings(**values)
    except ValueError as exc:
        parser.error(str(exc))
