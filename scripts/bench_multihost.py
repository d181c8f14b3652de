"""Benchmark: encrypted inference between two "hospitals" with real network latency.

    sudo .venv/bin/python scripts/bench_multihost.py [--rtt-ms 0,10,50] [--backbones lenet,resnet18]

Needs root, ``ip netns`` and ``tc`` (Debian: iproute2). The script builds its own network:
two namespaces joined by a veth pair with addresses in a private /30 (10.77.0.1 = party 0,
10.77.0.2 = party 1), and ``tc netem`` delays each direction by RTT/2; on kernels built without
netem it falls back to a userspace delay line (needs ``nft``, Debian: nftables; see TwoHosts). Party 0 (the image
owner, rendezvous master) runs in one namespace and party 1 (the model owner) in the other,
as separate processes joining over torch.distributed/gloo exactly as ``python -m predictor
--rank 0|1 --master-addr 10.77.0.1`` does (``models.mpc.init_party``). For every backbone and
RTT it reports the median encrypted latency of one image, its rounds and megabytes, and
writes ``docs/bench/multihost.json`` and ``docs/bench/multihost.md``. The namespaces are removed on exit,
whatever happens. Not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.inference import ForwardCost

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADDR = ("10.77.0.1", "10.77.0.2")
PORT = 29611


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class TwoHosts:
    """Two network namespaces and a veth pair between them; removed by ``close``.

    Latency: ``tc netem`` on each veth (RTT/2 each way) when the kernel has it; otherwise
    (kernels built without CONFIG_NET_SCH_NETEM, like this project's CI VM) a userspace
    delay line: in each namespace an nftables rule redirects TCP to the peer into a small
    proxy that forwards every chunk RTT/2 after it arrived (order kept, bandwidth not
    limited). Each connection crosses exactly one proxy, so a round trip costs one RTT.
    """

    MARK = 0x77  # the proxies' own onward connections carry this mark and are not redirected
    PROXY_PORT = 7700
    ECHO_PORT = 7701

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = (f"cd-h0-{tag}", f"cd-h1-{tag}")
        self.dev = (f"cdv0-{tag}", f"cdv1-{tag}")
        self.helpers: list[subprocess.Popen] = []
        self.mode = ""

    def open(self) -> None:
        for ns in self.ns:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1])
        for i in (0, 1):
            ns, dev = self.ns[i], self.dev[i]
            sh("ip", "link", "set", dev, "netns", ns)
            self.run(i, "ip", "addr", "add", f"{ADDR[i]}/30", "dev", dev)
            self.run(i, "ip", "link", "set", dev, "up")
            self.run(i, "ip", "link", "set", "lo", "up")
        probe = self.run(0, "tc", "qdisc", "add", "dev", self.dev[0], "root", "netem",
                         "delay", "1ms", check_ok=True)  # fmt: skip
        if probe.returncode == 0:
            self.mode = "tc netem"
            self.run(0, "tc", "qdisc", "del", "dev", self.dev[0], "root")
        elif shutil.which("nft"):
            self.mode = "userspace delay line (kernel has no netem)"
        else:
            raise RuntimeError(
                "no tc netem in this kernel and no nft to redirect: apt install nftables"
            )
        self.helpers.append(self._spawn(1, "--echo"))

    def run(self, i: int, *argv: str, check_ok: bool = False) -> subprocess.CompletedProcess:
        """A command inside namespace ``i`` (``check_ok``: its failure is expected, ignore it)."""
        return sh("ip", "netns", "exec", self.ns[i], *argv, check=not check_ok)

    def _spawn(self, i: int, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns[i], sys.executable, __file__, *args], cwd=ROOT
        )

    def _clear_delay(self) -> None:
        for proc in self.helpers[1:]:
            proc.terminate()
            proc.wait(timeout=10)
        del self.helpers[1:]
        for i in (0, 1):
            if self.mode == "tc netem":
                self.run(i, "tc", "qdisc", "del", "dev", self.dev[i], "root", check_ok=True)
            else:
                self.run(i, "nft", "delete", "table", "ip", "cdlat", check_ok=True)

    def set_rtt(self, rtt_ms: float | None) -> None:
        """RTT/2 each way; ``None``: no delay mechanism at all (the direct baseline)."""
        self._clear_delay()
        if rtt_ms is None:
            return
        for i in (0, 1):
            if self.mode == "tc netem":
                if rtt_ms > 0:
                    self.run(i, "tc", "qdisc", "add", "dev", self.dev[i], "root",
                             "netem", "delay", f"{rtt_ms / 2:g}ms")  # fmt: skip
                continue
            peer = ADDR[1 - i]
            rules = (
                "table ip cdlat {\n chain out {\n  type nat hook output priority -100;\n"
                f"  ip daddr {peer} meta l4proto tcp meta mark != {self.MARK} "
                f"redirect to :{self.PROXY_PORT}\n }}\n}}\n"
            )
            subprocess.run(["ip", "netns", "exec", self.ns[i], "nft", "-f", "-"], input=rules,
                           text=True, check=True, capture_output=True)  # fmt: skip
            self.helpers.append(self._spawn(i, "--proxy", "--delay-ms", f"{rtt_ms / 2:g}"))
        if self.mode != "tc netem":
            time.sleep(1.0)  # the proxies bind their port

    def ping_ms(self) -> float:
        """Measured application RTT: 1 byte to party 1's echo port and back (median of 7)."""
        probe = (
            "import socket, statistics, time\n"
            f"s = socket.create_connection(('{ADDR[1]}', {self.ECHO_PORT}), timeout=10)\n"
            "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
            "t = []\n"
            "for _ in range(7):\n"
            "    t0 = time.perf_counter(); s.sendall(b'x'); s.recv(1)\n"
            "    t.append(time.perf_counter() - t0)\n"
            "print(statistics.median(t) * 1000)\n"
        )
        return float(self.run(0, sys.executable, "-c", probe).stdout.strip())

    def close(self) -> None:
        for proc in self.helpers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for ns in self.ns:
            sh("ip", "netns", "del", ns, check=False)  # deleting a namespace removes its veth


async def _pump(reader, writer, delay_s: float) -> None:
    """Forward one direction, each chunk ``delay_s`` after it arrived (a delay line)."""
    import asyncio

    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        while chunk := await reader.read(1 << 18):
            queue.put_nowait((time.monotonic() + delay_s, chunk))
        queue.put_nowait((time.monotonic() + delay_s, b""))

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    await asyncio.gather(read(), write())


def run_proxy(delay_ms: float) -> None:
    """The delay line of one namespace: redirected connections go on to their original
    destination (SO_ORIGINAL_DST), every byte RTT/2 late."""
    import asyncio
    import socket
    import struct

    delay_s = delay_ms / 1000

    async def handle(reader, writer) -> None:
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        port, ip = struct.unpack("!H", raw[2:4])[0], socket.inet_ntoa(raw[4:8])
        onward = socket.socket()
        onward.setsockopt(socket.SOL_SOCKET, 36, TwoHosts.MARK)  # SO_MARK: not redirected
        onward.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(onward, (ip, port))
        except OSError:
            onward.close()
            writer.close()
            return
        for s in (onward, sock):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up_reader, up_writer = await asyncio.open_connection(sock=onward)
        try:
            await asyncio.gather(
                _pump(reader, up_writer, delay_s), _pump(up_reader, writer, delay_s)
            )
        except OSError:
            pass
        finally:
            writer.close()
            up_writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", TwoHosts.PROXY_PORT)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def run_echo() -> None:
    """Party 1's side of the RTT probe: echo every byte."""
    import socketserver

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(64):
                self.request.sendall(data)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer((ADDR[1], TwoHosts.ECHO_PORT), Echo) as server:
        server.serve_forever()


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


def measure(hosts: TwoHosts, checkpoint: Path, reps: int, port: int, timeout: float) -> dict:
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "GLOO_SOCKET_IFNAME": hosts.dev[rank], "PYTHONUNBUFFERED": "1"}
        argv = [
            "ip", "netns", "exec", hosts.ns[rank], sys.executable, __file__,
            "--party", str(rank), "--checkpoint", str(checkpoint), "--reps", str(reps),
            "--master-port", str(port),
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


def markdown(rows: list[dict], machine: str, mode: str) -> str:
    lines = [
        f"Machine: {machine}. Two parties in two network namespaces joined by a veth pair; "
        f"latency added by {mode} (RTT/2 each way); 'veth' = no delay mechanism at all. "
        "1 torch thread per party, TFP triples, batch 1, median of repeats, party 0's clock. "
        "Measured RTT: 1-byte TCP echo between the namespaces.",
        "",
        "| model | weights | RTT set (ms) | measured RTT (ms) | s/img encrypted | rounds | MB/img |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['weights']} | {_rtt(r['rtt_ms'])} | {r['ping_ms']:.2f} | "
            f"{r['seconds']:.3f} | {r['rounds']:.0f} | {r['bytes'] / 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", default="0,10,50")
    parser.add_argument("--backbones", default="lenet,resnet18")
    parser.add_argument("--reps", type=int, default=5, help="LeNet repeats (ResNet18: 2)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--timeout-s", type=float, default=300, help="per measurement")
    # internal: one party, started by the script itself inside a namespace
    parser.add_argument("--party", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, default=PORT, help=argparse.SUPPRESS)
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.proxy:
        run_proxy(args.delay_ms)
        return 0
    if args.echo:
        run_echo()
        return 0
    if args.party is not None:
        cost = party(args.party, args.checkpoint, args.reps, ADDR[0], args.master_port)
        print(json.dumps(dataclasses.asdict(cost)), flush=True)
        return 0

    if os.geteuid() != 0:
        print("[bench_multihost] needs root (ip netns, tc)", file=sys.stderr)
        return 2
    rtts: list[float | None] = [float(x) for x in args.rtt_ms.split(",")]
    backbones = args.backbones.split(",")
    hosts = TwoHosts()
    rows: list[dict] = []
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally below always removes the namespaces.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: sys.exit(1))
    workdir = Path(tempfile.mkdtemp(prefix="crypto-doctor-multihost-"))
    try:
        hosts.open()
        print(f"[bench_multihost] namespaces {hosts.ns}, veth {hosts.dev}; latency by "
              f"{hosts.mode}", flush=True)  # fmt: skip
        if hosts.mode != "tc netem":
            rtts = [None, *rtts]  # also the plain veth, to show what the delay line itself costs
        port = PORT
        from models.checkpoint import benchmark_checkpoint

        for backbone in backbones:
            checkpoint, weights = benchmark_checkpoint(ROOT / "models", backbone, workdir)
            reps = args.reps if backbone == "lenet" else max(1, min(args.reps, 2))
            for rtt in rtts:
                hosts.set_rtt(rtt)
                ping = hosts.ping_ms()
                port += 1
                result = measure(hosts, checkpoint, reps, port, args.timeout_s)
                row = {"backbone": backbone, "weights": weights, "rtt_ms": rtt, "ping_ms": ping,
                       "reps": reps, "latency_by": "none" if rtt is None else hosts.mode,
                       **result}  # fmt: skip
                rows.append(row)
                print(
                    f"[bench_multihost] {backbone:>8} RTT {_rtt(rtt):>6} ms (measured "
                    f"{ping:6.2f}): "
                    f"{result['seconds']:.3f} s/img, {result['rounds']:.0f} rounds, "
                    f"{result['bytes'] / 1e6:.2f} MB",
                    flush=True,
                )
    finally:
        hosts.close()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other work), "
        f"Python {platform.python_version()}"
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "multihost.json").write_text(
        json.dumps({"machine": machine, "latency_by": hosts.mode, "rows": rows}, indent=2) + "\n"
    )
    table = markdown(rows, machine, hosts.mode)
    (args.out_dir / "multihost.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
