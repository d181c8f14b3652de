"""Benchmark: encrypted inference between two "hospitals" with real network latency.

    sudo .venv/bin/python scripts/bench_multihost.py [--rtt-ms 0,10,50] [--backbones lenet,resnet18]
        [--links veth,wireguard]

Needs root, ``ip netns`` and ``tc`` (Debian: iproute2). The script builds its own network
(``scripts/twohosts.py``): two namespaces joined by a veth pair with addresses in a private /30
(10.77.0.1 = party 0, 10.77.0.2 = party 1), and ``tc netem`` delays each direction by RTT/2; on
kernels built without netem it falls back to a userspace delay line (needs ``nft``, Debian:
nftables). Party 0 (the image owner, rendezvous master) runs in one namespace and party 1 (the
model owner) in the other, as separate processes joining over torch.distributed/gloo exactly as
``python -m predictor --rank 0|1 --master-addr 10.77.0.1`` does (``models.mpc.init_party``).

``--links veth,wireguard`` also measures every row with the MPC link inside a WireGuard tunnel
between the namespaces (10.77.1.1 and 10.77.1.2), brought up by ``scripts/mpc_tunnel`` as
``docs/mpc-link.md`` tells operators to (Debian: wireguard-tools, nftables, and wireguard-go
where the kernel has no WireGuard module); the parties then use the tunnel address as master
address and ``GLOO_SOCKET_IFNAME`` names the tunnel interface. Same RTTs, same run, so the
tunnel's overhead is the difference between the two rows.

For every backbone, link and RTT it reports the median encrypted latency of one image, its
rounds and megabytes, and writes ``docs/bench/multihost.json`` and ``docs/bench/multihost.md``.
The namespaces and the tunnel are removed on exit, whatever happens. Not a test: it prints
figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.twohosts import ADDR, TUNNEL_ADDR, TwoHosts, tunnel_available  # noqa: E402

if TYPE_CHECKING:
    from models.inference import ForwardCost

PORT = 29611  # plain veth runs count up from here
TUNNEL_PORT = 29811  # tunnel runs count up from here; mpc_tunnel fences these off the veth
TUNNEL_PORTS = "29800-29999"
LINKS = ("veth", "wireguard")
TRANSPORTS = ("link", "gloo")
PROBE = "probe"  # the round-trip probe instead of a model
PROBE_ROUNDS = 20
LOOPBACK = "loopback"  # both parties on 127.0.0.1, outside the namespaces: the compute baseline


def party(
    rank: int,
    checkpoint: str,
    reps: int,
    master_addr: str,
    port: int,
    transport: str,
    comparison: str = "gate",
) -> ForwardCost:
    """One party of the benchmark (run inside its namespace): warm-up, then ``reps`` images;
    checkpoint ``probe``: ``PROBE_ROUNDS`` one-element all-reduces instead of an image.
    ``comparison``: how the ReLUs compare (``models.encrypted.relu_comparison``)."""
    from models.encrypted import relu_comparison
    from models.inference import EncryptedClassifier, measure_forward
    from models.mpc import PartyConfig, init_party

    config = PartyConfig(
        rank=rank, master_port=port, master_addr=master_addr, peer_link=transport == "link"
    )
    crypten = init_party(config)
    try:
        if checkpoint == PROBE:
            return probe_rounds(crypten, reps)
        # Party 1 (model owner) reads the checkpoint; party 0 (image owner) never does.
        classifier = EncryptedClassifier.for_party(crypten, rank, checkpoint)
        with relu_comparison(comparison):
            return measure_forward(classifier, 1, reps)
    finally:
        crypten.uninit()


def probe_rounds(crypten: ModuleType, reps: int) -> ForwardCost:
    """``PROBE_ROUNDS`` back-to-back rounds of the smallest kind (a one-element all-reduce, as
    in every Beaver multiplication): what one round costs on the transport, without compute."""
    import statistics
    import time

    import torch

    from models.inference import ForwardCost

    comm = crypten.communicator.get()
    crypten.cfg.communicator.verbose = True
    one = torch.ones(1, dtype=torch.long)
    comm.all_reduce(one)  # warm-up
    times, rounds = [], []
    for _ in range(reps):
        comm.reset_communication_stats()
        started = time.perf_counter()
        for _ in range(PROBE_ROUNDS):
            comm.all_reduce(one)
        times.append(time.perf_counter() - started)
        rounds.append(comm.get_communication_stats()["rounds"])
    return ForwardCost(
        statistics.median(times), tuple(round(t, 4) for t in times), statistics.median(rounds), 0
    )


def measure(
    hosts: TwoHosts,
    link: str,
    checkpoint: Path | str,
    reps: int,
    port: int,
    timeout: float,
    transport: str = "link",
    loopback: bool = False,
    comparison: str = "gate",
) -> dict:
    """Both parties, each in its namespace, over ``link`` (``loopback``: both on 127.0.0.1
    outside the namespaces); party 0's figures, plus party 1's bytes on the wire."""
    tunnel = link == "wireguard"
    master_addr = "127.0.0.1" if loopback else TUNNEL_ADDR[0] if tunnel else ADDR[0]
    procs = []
    for rank in (0, 1):
        # gloo's pairwise connections use the address of this interface (without it, that of
        # the hostname): over the tunnel it must name the tunnel, or shares bypass it
        ifname = "lo" if loopback else hosts.wg[rank] if tunnel else hosts.dev[rank]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": ifname, "PYTHONUNBUFFERED": "1"}
        netns = [] if loopback else ["ip", "netns", "exec", hosts.ns[rank]]
        argv = [
            *netns, sys.executable, __file__,
            "--party", str(rank), "--checkpoint", str(checkpoint), "--reps", str(reps),
            "--master-addr", master_addr, "--master-port", str(port), "--transport", transport,
            "--comparison", comparison,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"party failed ({p.returncode}):\n{err[-3000:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # party 0's clock: from sharing the image to holding the answer
    return {**outs[0], "peer_wire_bytes": outs[1]["wire_bytes"]}


def _rtt(rtt: float | str | None) -> str:
    return "veth" if rtt is None else rtt if isinstance(rtt, str) else f"{rtt:g}"


def _link(link: str) -> str:
    return "WireGuard" if link == "wireguard" else "plain"


def _same(row: dict, other: dict, *keys: str) -> bool:
    return all(row.get(k) == other.get(k) for k in keys)


def _overhead(row: dict, rows: list[dict]) -> str:
    """The tunnel's cost against the plain row of the same model, transport and RTT."""
    if row.get("link", "veth") != "wireguard":
        return ""
    for plain in rows:
        if _same(row, plain, "model", "rtt_ms", "transport") and plain["link"] == "veth":
            return f"{(row['seconds'] / plain['seconds'] - 1) * 100:+.0f}%"
    return ""


def _wire_bytes(row: dict, rows: list[dict]) -> float:
    """Bytes the busier direction carries per image: measured on the peer link; a gloo row
    moves the same payload, so it borrows the link row of its model."""
    for r in [row, *rows]:
        if r["model"] == row["model"] and r.get("wire_bytes") is not None:
            return max(r["wire_bytes"], r.get("peer_wire_bytes") or 0)
    return row["bytes"] / 2  # CrypTen counts an all-reduce twice


def derived(row: dict, rows: list[dict]) -> dict:
    """Per-round figures and the issue's bound, for rows with a delay line (RTT set >= 1 ms).

    ``per_round``: s/img / (rounds x RTT); ``beyond``: (s/img - loopback s/img of the same
    model and transport) / (rounds x RTT), what a round costs beyond compute, in RTTs;
    ``bound``: loopback + 1.5 x rounds x RTT + bytes / bandwidth.
    """
    base = next(
        (r for r in rows if _same(row, r, "model", "transport") and r["rtt_ms"] == LOOPBACK),
        None,
    )
    out: dict = {}
    rtt = row["rtt_ms"]
    if not isinstance(rtt, float | int) or rtt < 1 or not row["rounds"]:
        return out
    rtt_s = row["ping_ms"] / 1000
    out["per_round"] = row["seconds"] / (row["rounds"] * rtt_s)
    if base is not None:
        out["beyond"] = (row["seconds"] - base["seconds"]) / (row["rounds"] * rtt_s)
        if row.get("bandwidth_mbit") and row["model"] != PROBE:
            transfer = _wire_bytes(row, rows) * 8 / (row["bandwidth_mbit"] * 1e6)
            out["bound"] = base["seconds"] + 1.5 * row["rounds"] * rtt_s + transfer
    return out


def markdown(rows: list[dict], machine: str, mode: str, tunnel: str, when: str, load: str) -> str:
    links = (
        f" 'WireGuard' = the MPC link inside a WireGuard tunnel ({tunnel}) over the same veth, "
        "set up by scripts/mpc_tunnel; 'vs plain' = its time against the plain row of the "
        "same model and RTT."
        if tunnel
        else ""
    )
    bandwidth = {r.get("bandwidth_mbit") for r in rows if isinstance(r["rtt_ms"], float | int)}
    limit = ", ".join(f"{b:g} Mbit/s" for b in bandwidth if b) or "not limited"
    lines = [
        f"Machine: {machine}. Measured in one run started {when}; load average {load}. Two "
        "parties in two network namespaces joined by a veth pair; latency added by "
        f"{mode} (RTT/2 each way), bandwidth of the delay line {limit} each way; 'veth' = no "
        "delay mechanism at all; 'loopback' = both parties on 127.0.0.1 outside the "
        "namespaces (the compute baseline). 1 torch thread per party, TFP triples, batch 1, "
        "median of repeats, party 0's clock, random-init weights unless 'trained' (the time "
        "does not depend on them). Transport 'link' = the parties' direct link "
        "(models/peer_link.py), 'gloo' = CrypTen's torch.distributed collectives as shipped. "
        "Measured RTT: 1-byte TCP echo between the namespaces; delay line Mbit/s: 64 MiB "
        "bulk transfer through it, same setting. 'RTT/round' = s/img / (rounds x RTT); "
        "'beyond compute' = (s/img - loopback s/img, same model and transport) / (rounds x "
        "RTT); 'bound' = loopback s/img + 1.5 x rounds x RTT + wire MB / bandwidth. 'probe' "
        f"= {PROBE_ROUNDS} back-to-back one-element all-reduces (no compute): the cost of one "
        f"round on the transport. 's/img encrypted', rounds and MB are the forward once the "
        "image is there; 'offline' = before it, input-independent (dealing the sign gate's "
        "comparison keys and the weight products' triples, EncryptedClassifier.prepare), "
        f"measured over the same link.{links}",
        "",
        "| model | transport | link | RTT set (ms) | measured RTT (ms) | delay line Mbit/s | "
        "s/img encrypted | vs plain | rounds | MB/img (CrypTen count) | wire MB/img | "
        "RTT/round | beyond compute (RTT/round) | bound s/img | within bound | "
        "offline s/img | offline MB/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    ordered = sorted(  # by model, then transport, then RTT as measured
        enumerate(rows), key=lambda ir: (models.index(ir[1]["model"]), ir[1]["transport"], ir[0])
    )
    for _, r in ordered:
        d = derived(r, rows)
        wire = r.get("wire_bytes")
        cells = [
            r["model"], r["transport"], _link(r.get("link", "veth")), _rtt(r["rtt_ms"]),
            f"{r['ping_ms']:.2f}",
            f"{r['throughput_mbit']:.0f}" if r.get("throughput_mbit") else "",
            f"{r['seconds']:.3f}", _overhead(r, rows), f"{r['rounds']:.0f}",
            f"{r['bytes'] / 1e6:.2f}", "" if wire is None else f"{wire / 1e6:.2f}",
            f"{d['per_round']:.2f}" if "per_round" in d else "",
            f"{d['beyond']:.2f}" if "beyond" in d else "",
            f"{d['bound']:.2f}" if "bound" in d else "",
            ("yes" if r["seconds"] <= d["bound"] else "no") if "bound" in d else "",
            f"{r['offline_seconds']:.3f}" if r.get("offline_seconds") else "",
            f"{r['offline_bytes'] / 1e6:.2f}" if r.get("offline_bytes") else "",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_models(spec: str, transports: list[str]) -> list[tuple[str, int | None, list[str]]]:
    """``lenet,resnet18@128:link,probe`` -> [(backbone, image size or None for its default,
    transports)]; ``:link`` or ``:gloo`` narrows one model to one transport."""
    out: list[tuple[str, int | None, list[str]]] = []
    for item in spec.split(","):
        model, _, only = item.partition(":")
        name, _, size = model.partition("@")
        if only and only not in TRANSPORTS:
            raise ValueError(f"unknown transport {only!r} in {item!r}; choose from {TRANSPORTS}")
        out.append((name, int(size) if size else None, [only] if only else transports))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", default="0,10,50")
    parser.add_argument(
        "--backbones",
        default="probe,lenet,resnet18,resnet18-mpc,resnet18@128,resnet18-mpc@128",
        help="models, each BACKBONE[@IMAGE_SIZE][:TRANSPORT] (resnet18-mpc+reluN: ReLU in its last N stages), or 'probe' (the round-trip probe)",
    )
    parser.add_argument("--links", default="veth", help="veth, wireguard or both (comma)")
    parser.add_argument("--transports", default="link,gloo", help="link, gloo or both (comma)")
    parser.add_argument(
        "--bandwidth-mbit", type=float, default=500.0, help="delay line limit each way (0: none)"
    )
    parser.add_argument("--reps", type=int, default=5, help="LeNet repeats (ResNets: 2)")
    parser.add_argument(
        "--skip-veth", action="store_true", help="no row without the delay line (saves time)"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--timeout-s", type=float, default=600, help="per measurement")
    # internal: one party, started by the script itself inside a namespace
    parser.add_argument("--party", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--master-addr", default=ADDR[0], help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, default=PORT, help=argparse.SUPPRESS)
    parser.add_argument("--transport", default="link", help=argparse.SUPPRESS)
    parser.add_argument("--comparison", default="gate", help=argparse.SUPPRESS)
    parser.add_argument(
        "--relu-comparisons",
        default="gate",
        help="how ReLU networks compare: gate (the one-opening sign gate), crypten "
        "(CrypTen's circuit) or both (comma): each ReLU model is measured once per choice",
    )
    args = parser.parse_args(argv)
    if args.party is not None:
        cost = party(
            args.party, args.checkpoint, args.reps, args.master_addr, args.master_port,
            args.transport, args.comparison,
        )  # fmt: skip
        print(json.dumps(dataclasses.asdict(cost)), flush=True)
        return 0

    if os.geteuid() != 0:
        print("[bench_multihost] needs root (ip netns, tc)", file=sys.stderr)
        return 2
    links = args.links.split(",")
    if unknown := set(links) - set(LINKS):
        parser.error(f"unknown link {sorted(unknown)}; choose from {LINKS}")
    transports = args.transports.split(",")
    if unknown := set(transports) - set(TRANSPORTS):
        parser.error(f"unknown transport {sorted(unknown)}; choose from {TRANSPORTS}")
    if "wireguard" in links and (why := tunnel_available()):
        print(f"[bench_multihost] cannot build the WireGuard tunnel: {why}", file=sys.stderr)
        return 2
    comparisons = args.relu_comparisons.split(",")
    if unknown := set(comparisons) - {"gate", "crypten"}:
        parser.error(f"unknown ReLU comparison {sorted(unknown)}; choose gate or crypten")
    rtts: list[float | str | None] = [float(x) for x in args.rtt_ms.split(",")]
    try:
        models = parse_models(args.backbones, transports)
    except ValueError as exc:
        parser.error(str(exc))
    bandwidth = args.bandwidth_mbit or None
    hosts = TwoHosts()
    rows: list[dict] = []
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below always removes the namespaces.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="crypto-doctor-multihost-"))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    loads: list[float] = []
    try:
        hosts.open()
        print(f"[bench_multihost] namespaces {hosts.ns}, veth {hosts.dev}; latency by "
              f"{hosts.mode}", flush=True)  # fmt: skip
        if "wireguard" in links:
            hosts.open_tunnel(workdir / "keys", TUNNEL_PORTS)
            print(f"[bench_multihost] WireGuard {hosts.wg} by {hosts.tunnel}", flush=True)
        # the compute baseline first, then the plain veth (what the delay line itself costs)
        rtts = [LOOPBACK, *([] if args.skip_veth else [None]), *rtts]
        ports = {"veth": PORT, "wireguard": TUNNEL_PORT}
        from models.checkpoint import benchmark_checkpoint

        checkpoints: dict[tuple[str, int | None], tuple[str, str, int, list[str]]] = {}
        for backbone, size, only in models:
            if backbone == PROBE:
                checkpoints[(backbone, size)] = (PROBE, "", 0, only)
                continue
            path, weights = benchmark_checkpoint(ROOT / "models", backbone, workdir, size)
            from models.checkpoint import load_checkpoint

            actual = load_checkpoint(path).architecture.image_size
            checkpoints[(backbone, size)] = (str(path), weights, actual, only)
        for rtt in rtts:
            limited = bandwidth if isinstance(rtt, float) else None
            hosts.set_rtt(rtt if isinstance(rtt, float) else None, limited)
            loads.append(os.getloadavg()[0])
            for link in links if rtt != LOOPBACK else ["veth"]:
                peer = TUNNEL_ADDR[1] if link == "wireguard" else ADDR[1]
                ping = 0.0 if rtt == LOOPBACK else hosts.ping_ms(peer)
                throughput = None if rtt == LOOPBACK else hosts.throughput_mbit(peer)
                for (backbone, _), (checkpoint, weights, actual, only) in checkpoints.items():
                    relus = backbone.startswith("resnet18") and backbone != "resnet18-mpc"
                    for comparison in comparisons if relus else ["gate"]:
                        name = backbone if backbone == PROBE else f"{backbone} {actual}²"
                        if comparison == "crypten":
                            name += " (CrypTen's ReLU)"
                        reps = (
                            args.reps if backbone in ("lenet", PROBE) else max(1, min(args.reps, 2))
                        )
                        for transport in only:
                            ports[link] += 1
                            result = measure(
                                hosts, link, checkpoint, reps, ports[link], args.timeout_s,
                                transport, loopback=rtt == LOOPBACK, comparison=comparison,
                            )  # fmt: skip
                            row = {"model": name, "backbone": backbone, "image_size": actual,
                                   "weights": weights, "link": link, "transport": transport,
                                   "rtt_ms": rtt, "ping_ms": ping, "throughput_mbit": throughput,
                                   "bandwidth_mbit": limited, "reps": reps, "relu": comparison,
                                   "latency_by": hosts.mode if isinstance(rtt, float) else "none",
                                   **result}  # fmt: skip
                            rows.append(row)
                            print(
                                f"[bench_multihost] {name:>18} {transport:>4} {_link(link):>9} RTT "
                                f"{_rtt(rtt):>8} ms (measured {ping:6.2f}): "
                                f"{result['seconds']:.3f} s/img, {result['rounds']:.0f} rounds, "
                                f"{result['bytes'] / 1e6:.2f} MB, offline "
                                f"{result.get('offline_seconds', 0):.3f} s",
                                flush=True,
                            )
    finally:
        hosts.close()
        shutil.rmtree(workdir, ignore_errors=True)  # holds the tunnel's private keys
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}"
    )
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "measured": when, "latency_by": hosts.mode,
              "load_average": load, "bandwidth_mbit": bandwidth,
              "tunnel": hosts.tunnel or None, "rows": rows}  # fmt: skip
    (args.out_dir / "multihost.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, machine, hosts.mode, hosts.tunnel, when, load)
    (args.out_dir / "multihost.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
