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


def party(rank: int, checkpoint: str, reps: int, master_addr: str, port: int) -> ForwardCost:
    """One party of the benchmark (run inside its namespace): warm-up, then ``reps`` images."""
    from models.inference import EncryptedClassifier, measure_forward
    from models.mpc import PartyConfig, init_party

    crypten = init_party(PartyConfig(rank=rank, master_port=port, master_addr=master_addr))
    try:
        # Party 1 (model owner) reads the checkpoint; party 0 (image owner) never does.
        return measure_forward(EncryptedClassifier.for_party(crypten, rank, checkpoint), 1, reps)
    finally:
        crypten.uninit()


def measure(
    hosts: TwoHosts, link: str, checkpoint: Path, reps: int, port: int, timeout: float
) -> dict:
    """Both parties, each in its namespace, over ``link``; party 0's figures."""
    tunnel = link == "wireguard"
    master_addr = TUNNEL_ADDR[0] if tunnel else ADDR[0]
    procs = []
    for rank in (0, 1):
        # gloo's pairwise connections use the address of this interface (without it, that of
        # the hostname): over the tunnel it must name the tunnel, or shares bypass it
        ifname = hosts.wg[rank] if tunnel else hosts.dev[rank]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": ifname, "PYTHONUNBUFFERED": "1"}
        argv = [
            "ip", "netns", "exec", hosts.ns[rank], sys.executable, __file__,
            "--party", str(rank), "--checkpoint", str(checkpoint), "--reps", str(reps),
            "--master-addr", master_addr, "--master-port", str(port),
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
    return outs[0]  # party 0's clock: from sharing the image to holding the answer


def _rtt(rtt: float | None) -> str:
    return "veth" if rtt is None else f"{rtt:g}"


def _link(link: str) -> str:
    return "WireGuard" if link == "wireguard" else "plain"


def _overhead(row: dict, rows: list[dict]) -> str:
    """The tunnel's cost against the plain row of the same model and RTT."""
    if row.get("link", "veth") != "wireguard":
        return ""
    for plain in rows:
        same = plain["backbone"] == row["backbone"] and plain["rtt_ms"] == row["rtt_ms"]
        if same and plain.get("link", "veth") == "veth":
            return f"{(row['seconds'] / plain['seconds'] - 1) * 100:+.0f}%"
    return ""


def markdown(rows: list[dict], machine: str, mode: str, tunnel: str, when: str) -> str:
    links = (
        f" 'WireGuard' = the MPC link inside a WireGuard tunnel ({tunnel}) over the same veth, "
        "set up by scripts/mpc_tunnel; 'vs plain' = its time against the plain row of the "
        "same model and RTT."
        if tunnel
        else ""
    )
    lines = [
        f"Machine: {machine}. Measured in one run started {when}. Two parties in two network namespaces joined by "
        f"a veth pair; latency added by {mode} (RTT/2 each way); 'veth' = no delay mechanism "
        "at all. 1 torch thread per party, TFP triples, batch 1, median of repeats, party 0's "
        f"clock. Measured RTT: 1-byte TCP echo between the namespaces, over the link.{links}",
        "",
        "| model | weights | link | RTT set (ms) | measured RTT (ms) | s/img encrypted | "
        "vs plain | rounds | MB/img |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['weights']} | {_link(r.get('link', 'veth'))} | "
            f"{_rtt(r['rtt_ms'])} | {r['ping_ms']:.2f} | {r['seconds']:.3f} | "
            f"{_overhead(r, rows)} | {r['rounds']:.0f} | {r['bytes'] / 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", default="0,10,50")
    parser.add_argument("--backbones", default="lenet,resnet18")
    parser.add_argument("--links", default="veth", help="veth, wireguard or both (comma)")
    parser.add_argument("--reps", type=int, default=5, help="LeNet repeats (ResNet18: 2)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--timeout-s", type=float, default=300, help="per measurement")
    # internal: one party, started by the script itself inside a namespace
    parser.add_argument("--party", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--master-addr", default=ADDR[0], help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, default=PORT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.party is not None:
        cost = party(args.party, args.checkpoint, args.reps, args.master_addr, args.master_port)
        print(json.dumps(dataclasses.asdict(cost)), flush=True)
        return 0

    if os.geteuid() != 0:
        print("[bench_multihost] needs root (ip netns, tc)", file=sys.stderr)
        return 2
    links = args.links.split(",")
    if unknown := set(links) - set(LINKS):
        parser.error(f"unknown link {sorted(unknown)}; choose from {LINKS}")
    if "wireguard" in links and (why := tunnel_available()):
        print(f"[bench_multihost] cannot build the WireGuard tunnel: {why}", file=sys.stderr)
        return 2
    rtts: list[float | None] = [float(x) for x in args.rtt_ms.split(",")]
    backbones = args.backbones.split(",")
    hosts = TwoHosts()
    rows: list[dict] = []
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below always removes the namespaces.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="crypto-doctor-multihost-"))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        hosts.open()
        print(f"[bench_multihost] namespaces {hosts.ns}, veth {hosts.dev}; latency by "
              f"{hosts.mode}", flush=True)  # fmt: skip
        if "wireguard" in links:
            hosts.open_tunnel(workdir / "keys", TUNNEL_PORTS)
            print(f"[bench_multihost] WireGuard {hosts.wg} by {hosts.tunnel}", flush=True)
        if hosts.mode != "tc netem":
            rtts = [None, *rtts]  # also the plain veth, to show what the delay line itself costs
        ports = {"veth": PORT, "wireguard": TUNNEL_PORT}
        from models.checkpoint import benchmark_checkpoint

        for backbone in backbones:
            checkpoint, weights = benchmark_checkpoint(ROOT / "models", backbone, workdir)
            reps = args.reps if backbone == "lenet" else max(1, min(args.reps, 2))
            for rtt in rtts:
                hosts.set_rtt(rtt)
                for link in links:  # side by side, so both see the same machine load
                    ping = hosts.ping_ms(TUNNEL_ADDR[1] if link == "wireguard" else ADDR[1])
                    ports[link] += 1
                    result = measure(hosts, link, checkpoint, reps, ports[link], args.timeout_s)
                    row = {"backbone": backbone, "weights": weights, "link": link,
                           "rtt_ms": rtt, "ping_ms": ping, "reps": reps,
                           "latency_by": "none" if rtt is None else hosts.mode,
                           **result}  # fmt: skip
                    rows.append(row)
                    print(
                        f"[bench_multihost] {backbone:>8} {_link(link):>9} RTT {_rtt(rtt):>6} "
                        f"ms (measured {ping:6.2f}): "
                        f"{result['seconds']:.3f} s/img, {result['rounds']:.0f} rounds, "
                        f"{result['bytes'] / 1e6:.2f} MB",
                        flush=True,
                    )
    finally:
        hosts.close()
        shutil.rmtree(workdir, ignore_errors=True)  # holds the tunnel's private keys
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine, "measured": when, "latency_by": hosts.mode,
              "tunnel": hosts.tunnel or None, "rows": rows}  # fmt: skip
    (args.out_dir / "multihost.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, machine, hosts.mode, hosts.tunnel, when)
    (args.out_dir / "multihost.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
