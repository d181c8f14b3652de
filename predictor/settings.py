"""The predictor's one settings object: CLI flags, with ``CRYPTO_DOCTOR_*`` env fallbacks.

Built once by ``python -m predictor`` (via :mod:`infra.settings`) and passed down. The
supervisor hands it to each party process as flags, and its secrets as environment variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from infra.messaging import generate_key, public_key
from infra.net import is_loopback
from infra.settings import flag, nested, parse_settings
from marketplace.domain.policy import MarketPolicy
from marketplace.passport_links import check_view_url
from marketplace.service.settings import POLICY_FLAGS
from marketplace.storage import DEFAULT_MARKET_DB_URL
from models.mpc import PROVIDERS
from models.nets import BACKBONES
from predictor.access.policy import AccessCaps
from predictor.clinic.store import DEFAULT_CLINIC_DB_URL


@dataclass(frozen=True)
class PredictorSettings:
    host: str = field(default="127.0.0.1", metadata=flag("interface both services listen on"))
    patient_port: int = field(default=8080, metadata=flag("party 0's patient API port"))
    doctor_port: int = field(default=8081, metadata=flag("party 1's doctor API and page port"))
    patient_public_url: str = field(
        default="", metadata=flag("URL doctors' browsers use to reach party 0 (image links)")
    )
    backbone: str = field(default="lenet", metadata=flag(f"one of {', '.join(BACKBONES)}"))
    model_path: Path | None = field(
        default=None, metadata=flag("checkpoint party 1 serves (default models/<backbone>.pth)")
    )
    serving_file: Path | None = field(
        default=None,
        metadata=flag(
            "party 1's choice of checkpoint to serve instead of --model-path, written by "
            "python -m predictor.switch_model (default var/party1/serving.json)"
        ),
    )
    clinic_db_url: str = field(
        default=DEFAULT_CLINIC_DB_URL, metadata=flag("party 0's own store (SQLAlchemy URL)")
    )
    market_db_url: str = field(
        default=DEFAULT_MARKET_DB_URL,
        metadata=flag("the marketplace's own store (the supervisor hands it to it alone)"),
    )
    data_dir: Path | None = field(
        default=None, metadata=flag("party 0's private image folder (default var/party0)")
    )
    rank: int | None = field(
        default=None,
        metadata=flag("run only this party (0 patient side, 1 model side, 2 TTP dealer)"),
    )
    master_addr: str = field(
        default="127.0.0.1", metadata=flag("address of party 0's torch.distributed rendezvous")
    )
    master_port: int = field(default=29500, metadata=flag("port of the rendezvous"))
    mpc_interface: str = field(
        default="",
        metadata=flag(
            "network interface of the MPC link (the tunnel's, e.g. wg0); required when "
            "--master-addr is not a loopback address"
        ),
    )
    provider: str = field(
        default="TFP", metadata=flag("Beaver-triple provider: TFP (party 0) or TTP (dealer)")
    )
    # Scale-out: several party pairs (and several MPC processes per pair) share the clinic's
    # queue in its store (predictor.clinic.queue); pair 0's process 0 also serves patients.
    pairs: int = field(
        default=1,
        metadata=flag("party pairs the supervisor runs on this host (more than 1: PostgreSQL)"),
    )
    processes_per_pair: int = field(
        default=1,
        metadata=flag(
            "MPC processes per pair (one MPC session each): keeps the CPUs busy while "
            "batches wait on the network (more than 1: PostgreSQL)"
        ),
    )
    pair_id: int = field(
        default=0, metadata=flag("with --rank: the pair this party belongs to (0 serves patients)")
    )
    pair_process: int = field(
        default=0,
        metadata=flag("with --rank: which of its pair's MPC processes this is (0, 1, ...)"),
    )
    lease_s: float = field(
        default=60.0,
        metadata=flag("seconds a claimed case stays with its pair without a lease renewal"),
    )
    queue_poll_ms: float = field(
        default=100.0, metadata=flag("how often an idle pair looks for queued cases")
    )
    max_batch: int = field(default=8, metadata=flag("largest batch one encrypted pass takes"))
    batch_wait_ms: float = field(
        default=5.0, metadata=flag("how long to wait for more images before running a batch")
    )
    max_upload_bytes: int = field(default=10 * 1024 * 1024, metadata=flag("largest upload"))
    max_image_pixels: int = field(default=40_000_000, metadata=flag("most pixels per image"))
    clinic_key: str = field(
        default="", metadata=flag("the clinic's Ed25519 private key (hex)", secret=True)
    )
    market_key: str = field(
        default="", metadata=flag("the marketplace's Ed25519 private key (hex)", secret=True)
    )
    market_public_key: str = field(
        default="", metadata=flag("the marketplace's public key: party 0 checks its messages")
    )
    marketplace_url: str = field(
        default="", metadata=flag("where party 0 sends messages (default the doctor port here)")
    )
    seat_wait_s: float = field(
        default=5.0, metadata=flag("how long a valid image request waits for its seat message")
    )
    #: The clinic's own bounds on image access (whatever seats the marketplace grants).
    access_caps: AccessCaps = field(default_factory=AccessCaps, metadata=nested(""))
    num_threads: int = field(default=1, metadata=flag("torch threads per party"))
    heartbeat_s: float = field(
        default=20.0, metadata=flag("seconds of MPC silence before party 0 pings party 1")
    )
    control_log: Path | None = field(
        default=None, metadata=flag("party 1 appends each control message from party 0 here")
    )
    operator_token: str = field(
        default="", metadata=flag("bearer token for /metrics from off this host", secret=True)
    )
    #: How often the supervisor has restarted the pair (it passes the count; party 0 exports it).
    restarts: int = field(default=0, metadata=flag("restarts of this pair so far (supervisor)"))
    access_log: bool = field(default=False, metadata=flag("log one line per HTTP request"))
    #: Party 0 under the supervisor: the patient API's listening socket stays open in the
    #: supervisor across restarts (it answers 503 meanwhile), so patients are never refused.
    patient_socket_fd: int = field(
        default=-1,
        metadata=flag("party 0 serves on this inherited listening socket (-1: bind its own)"),
    )
    ready_fd: int = field(
        default=-1, metadata=flag("party 0 writes a byte to this pipe once it serves (-1: none)")
    )
    #: Market rules: party 0 prices each bounty with the same policy party 1's marketplace uses.
    policy: MarketPolicy = field(default_factory=MarketPolicy, metadata=POLICY_FLAGS)
    # The Ocean side, run by the supervisor next to the parties (never by a single --rank).
    ocean: bool = field(
        default=True, metadata=flag("start the Ocean side (chain, publisher, downloads)")
    )
    ocean_rpc_url: str = field(
        default="", metadata=flag("external chain JSON-RPC URL (default: start ganache)")
    )
    chain_port: int = field(default=8545, metadata=flag("port of the local ganache chain"))
    ocean_port: int = field(default=8082, metadata=flag("port of the research-data downloads"))
    ocean_public_url: str = field(
        default="",
        metadata=flag(
            "URL doctors' browsers use to reach the Ocean service (case answers link model "
            "passports there; default http://<host>:<ocean-port>, none with --no-ocean)"
        ),
    )
    ocean_data_dir: Path = field(
        default=Path("var/ocean"), metadata=flag("Ocean side's folder (chain, CSV, state)")
    )
    publish_every_s: float = field(default=10.0, metadata=flag("seconds between publisher runs"))
    publish_metrics_port: int = field(
        default=0, metadata=flag("publisher's /metrics port on 127.0.0.1 (0: off)")
    )
    ocean_k: int = field(
        default=0, metadata=flag("k of the k-anonymity rule (0: the Ocean side's default, 5)")
    )
    ocean_deploy: bool = field(
        default=True, metadata=flag("deploy Ocean's contracts when the address file is stale")
    )
    # Model passport (issue 15): party 1 checks its checkpoint against the chain before serving.
    allow_unattested: bool = field(
        default=False,
        metadata=flag(
            "party 1 serves a checkpoint no passport on chain attests (or with the chain down); "
            "every GET /case answer and the doctor page then say the model is unattested"
        ),
    )
    passport_owner: str = field(
        default="",
        metadata=flag("address of the model owner whose passports count (default: the key's)"),
    )
    passport_owner_key: str = field(
        default="",
        metadata=flag(
            "the model owner's private key, 0x-hex (default: dev account 3)",
            env="PASSPORT_OWNER_KEY",
            secret=True,
        ),
    )
    passport_wait_s: float = field(
        default=60.0,
        metadata=flag("how long party 1 waits for the chain before refusing to serve"),
    )
    passport_mint: bool = field(
        default=False,
        metadata=flag(
            "the supervisor mints the served checkpoint's passport (idempotent, from its "
            "<stem>.provenance.json) before starting the parties"
        ),
    )

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}")
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}")
        if self.rank not in (None, 0, 1, 2):
            raise ValueError("rank must be 0, 1 or 2 (the TTP dealer)")
        if not 1 <= self.max_batch <= 64:
            raise ValueError("max_batch must be between 1 and 64")
        if not (1 <= self.pairs <= 64 and 1 <= self.processes_per_pair <= 64):
            raise ValueError("pairs and processes_per_pair must be between 1 and 64")
        if self.pair_id < 0 or self.pair_process < 0:
            raise ValueError("pair_id and pair_process must be >= 0")
        if self.lease_s <= 0 or self.queue_poll_ms <= 0:
            raise ValueError("lease_s and queue_poll_ms must be positive")
        shares_queue = self.pairs * self.processes_per_pair > 1 or (
            self.rank == 0 and (self.pair_id, self.pair_process) != (0, 0)
        )
        if shares_queue and self.clinic_db_url.startswith("sqlite"):
            raise ValueError(
                "more than one party pair (or MPC process per pair) shares the clinic's queue, "
                "which needs PostgreSQL: set CRYPTO_DOCTOR_CLINIC_DB_URL=postgresql://… "
                "(SQLite is the embedded default for one pair only)"
            )
        if self.ocean_k < 0 or self.publish_every_s <= 0:
            raise ValueError("ocean_k must be >= 0 and publish_every_s positive")
        check_view_url(self.ocean_public_url, "ocean_public_url")
        if self.rank is not None and not self.mpc_interface and not is_loopback(self.master_addr):
            raise ValueError(
                "the MPC link between hosts must run inside a tunnel: give --mpc-interface "
                "(e.g. wg0, see docs/mpc-link.md)"
            )
        for name in ("clinic_key", "market_key", "market_public_key"):
            value = getattr(self, name)
            try:
                if value and len(bytes.fromhex(value)) != 32:
                    raise ValueError
            except ValueError as exc:
                raise ValueError(f"{name} must be 32 bytes of hex") from exc

    @property
    def worker_id(self) -> str:
        """This party's MPC process as the queue's leases name it: ``pair<id>.<process>``."""
        return f"pair{self.pair_id}.{self.pair_process}"

    @property
    def serves_patients(self) -> bool:
        """Party 0 of pair 0's process 0 is the patient API, the single front door."""
        return (self.pair_id, self.pair_process) == (0, 0)

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path or Path("models") / f"{self.backbone}.pth"

    @property
    def resolved_serving_file(self) -> Path:
        return self.serving_file or Path("var/party1/serving.json")

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
    def passport_view_url(self) -> str:
        """Where the marketplace links model passports: ``--ocean-public-url``, else the Ocean
        service started here (a wildcard host as 127.0.0.1), else none (``--no-ocean``)."""
        if self.ocean_public_url or not self.ocean:
            return self.ocean_public_url
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        if ":" in host:  # an IPv6 address goes in brackets
            host = f"[{host}]"
        return f"http://{host}:{self.ocean_port}"

    @property
    def ocean_address_file(self) -> Path:
        return self.ocean_data_dir / "address.json"

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or Path("var/party0")

    @property
    def resolved_marketplace_url(self) -> str:
        return self.marketplace_url or f"http://127.0.0.1:{self.doctor_port}"

    def with_keys(self) -> PredictorSettings:
        """Same settings, with fresh organisation keys where none were configured (one host)."""
        clinic_key = self.clinic_key or generate_key()
        market_key = self.market_key or generate_key()
        return replace(
            self,
            clinic_key=clinic_key,
            market_key=market_key,
            market_public_key=self.market_public_key or public_key(market_key),
        )


def parse_predictor_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> PredictorSettings:
    """Flags win over ``CRYPTO_DOCTOR_<NAME>`` environment variables, which win over defaults."""
    return parse_settings(
        PredictorSettings,
        argv,
        env,
        prog="python -m predictor",
        description="Run crypto-doctor: two MPC parties (patient API :8080, doctor API :8081) "
        "and the Ocean side (chain :8545, research downloads :8082).",
    )
