"""Starting CrypTen parties as real OS processes that rendezvous over torch.distributed.

Two ways in:
* :func:`init_party` joins the computation from an already running process (the predictor's
  parties, possibly on two hosts);
* :func:`run_parties` spawns both parties (and the TTP dealer, if chosen) on this machine and
  returns what each party's function returned — used by encrypted validation, tests and
  benchmarks.

Beaver-triple providers: ``TFP`` (trusted first party: party 0 generates the correlated
randomness, so it *could* reconstruct party 1's shares) and ``TTP`` (a third dealer process
generates it and must not collude with either party).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from types import ModuleType
from typing import Any

from infra.net import free_port
from models.crypten_compat import load_crypten, use_peer_link
from models.peer_link import DEFAULT_BUFFER_BYTES, TOKEN_BYTES, PeerLink

PROVIDERS = ("TFP", "TTP")
DEALER_RANK = 2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartyConfig:
    """How one process joins the two-party computation."""

    rank: int
    master_port: int
    master_addr: str = "127.0.0.1"
    provider: str = "TFP"
    num_threads: int = 1
    #: Network interface gloo binds and announces (the tunnel's between hosts, e.g. ``wg0``);
    #: None: whatever the host name resolves to.
    interface: str | None = None
    #: True: the parties' rounds go over their direct link (``models.peer_link``: one
    #: concurrent exchange per round); False: over gloo, as CrypTen ships (for comparison).
    peer_link: bool = True
    #: Socket buffers of the peer link, each way: at least bandwidth x RTT (0: kernel autotuning).
    link_buffer_bytes: int = DEFAULT_BUFFER_BYTES

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, not {self.provider!r}")
        if self.rank not in (0, 1, DEALER_RANK):
            raise ValueError("rank must be 0 (patient side), 1 (model side) or 2 (TTP dealer)")
        if self.rank == DEALER_RANK and self.provider != "TTP":
            raise ValueError("rank 2 is the TTP dealer; it exists only with provider TTP")


def init_party(config: PartyConfig) -> ModuleType:
    """Join the computation; blocks until every party (and the dealer) has arrived.

    CrypTen reads its rendezvous from the environment, so this adapter is the one place
    that writes it.
    """
    import torch

    crypten = load_crypten()
    torch.set_num_threads(config.num_threads)
    os.environ.update(
        RANK=str(config.rank),
        WORLD_SIZE="2",
        MASTER_ADDR=config.master_addr,
        MASTER_PORT=str(config.master_port),
        RENDEZVOUS="env://",
        DISTRIBUTED_BACKEND="gloo",
    )
    if config.interface:
        # Each party announces the address it binds, so every party must pin it: otherwise
        # the shares and CrypTen's seeds would go around the tunnel.
        os.environ["GLOO_SOCKET_IFNAME"] = config.interface
    crypten.cfg.mpc.provider = config.provider
    crypten.init()
    if config.peer_link and config.rank != DEALER_RANK:
        open_peer_link(crypten, config)
    return crypten


def open_peer_link(crypten: ModuleType, config: PartyConfig) -> None:
    """Connect the two parties directly and route CrypTen's rounds over that link.

    Party 0 listens on its master address and hands party 1 the port and a one-time token
    over the MPC channel CrypTen has just set up; party 1 connects and presents the token.
    """
    import secrets

    comm = crypten.communicator.get()
    if config.rank == 0:
        listener = PeerLink.listen(config.master_addr, config.link_buffer_bytes)
        token = secrets.token_bytes(TOKEN_BYTES)
        comm.broadcast_obj((listener.getsockname()[1], token), 0)
        link = PeerLink.accept(listener, token)
    else:
        port, token = comm.broadcast_obj(None, 0)
        link = PeerLink.connect(config.master_addr, port, token, config.link_buffer_bytes)
    log.info("peer link up (socket buffers send/receive %d/%d bytes)", *link.buffer_bytes)
    use_peer_link(comm, link)


def run_dealer(config: PartyConfig) -> None:
    """Serve Beaver triples as the TTP until party 0 shuts the computation down."""
    init_party(config)
    from crypten.mpc.provider.ttp_provider import TTPServer

    TTPServer()


def _party_main(
    config: PartyConfig,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: Queue[Any],
    collected: Any,
) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"[party {config.rank}] %(levelname)s %(name)s: %(message)s"
    )
    try:
        if config.rank == DEALER_RANK:
            run_dealer(config)
            return
        crypten = init_party(config)
        try:
            results.put((config.rank, "ok", fn(config.rank, *args)))
            # a tensor in the result travels as a file descriptor this process hands out:
            # stay alive until the parent has taken it
            collected.wait(timeout=120)
        finally:
            crypten.uninit()
    except BaseException as exc:  # report any failure to the parent, then exit non-zero
        results.put((config.rank, "error", f"{exc!r}\n{traceback.format_exc()}"))
        raise


def run_parties(
    fn: Callable[..., Any],
    *args: Any,
    provider: str = "TFP",
    num_threads: int = 1,
    timeout_s: float = 1800.0,
    peer_link: bool = True,
) -> list[Any]:
    """Run ``fn(rank, *args)`` in two freshly spawned party processes; return both results.

    ``fn`` must be importable (a module-level function): parties are spawned, not forked,
    so each one starts clean and applies the CrypTen patches itself.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    collected = ctx.Event()
    port = free_port()
    ranks = [0, 1] + ([DEALER_RANK] if provider == "TTP" else [])
    procs = [
        ctx.Process(
            target=_party_main,
            args=(
                PartyConfig(
                    rank, port, provider=provider, num_threads=num_threads, peer_link=peer_link
                ),
                fn,
                args,
                results,
                collected,
            ),
            name=f"crypten-party-{rank}",
        )
        for rank in ranks
    ]
    for proc in procs:
        proc.start()
    outcome: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(outcome) < 2:
            try:
                rank, status, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.name for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"MPC parties did not finish: died={dead}") from None
                continue
            if status == "error":
                raise RuntimeError(f"party {rank} failed: {value}")
            outcome[rank] = value
        collected.set()
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
    return [outcome[0], outcome[1]]
