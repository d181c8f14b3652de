"""Two "hosts" on one machine: network namespaces joined by a veth pair, for the multi-host
benchmark (``scripts/bench_multihost.py``) and the MPC-link test (``tests/e2e/test_mpc_link.py``).

Root only. Addresses are private and live only inside the two namespaces: the veth (the "LAN"
between the hosts) is 10.77.0.1/30 (host 0) and 10.77.0.2/30 (host 1); the optional WireGuard
tunnel over it, brought up with the operators' own ``scripts/mpc_tunnel``, is 10.77.1.1 and
10.77.1.2. ``close`` removes the tunnel, the helpers and the namespaces, whatever happened.

Run as a script, this module is one of the helpers it starts inside a namespace (a delay-line
proxy, an echo server, or a packet capture); they are internal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPC_TUNNEL = ROOT / "scripts" / "mpc_tunnel"
ADDR = ("10.77.0.1", "10.77.0.2")
TUNNEL_ADDR = ("10.77.1.1", "10.77.1.2")
WG_PORT = 51820


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def tunnel_available() -> str | None:
    """Why a WireGuard tunnel cannot be built here, or None when it can."""
    for tool, package in (("wg", "wireguard-tools"), ("nft", "nftables")):
        if not shutil.which(tool):
            return f"no {tool} (Debian: apt-get install {package})"
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        return (
            "no WireGuard kernel module and no wireguard-go (Debian: apt-get install wireguard-go)"
        )
    if not Path("/dev/net/tun").exists() and not Path("/sys/module/wireguard").exists():
        return "no /dev/net/tun for wireguard-go"
    return None


class TwoHosts:
    """Two network namespaces and a veth pair between them; removed by ``close``.

    Latency: ``tc netem`` on each veth (RTT/2 each way) when the kernel has it; otherwise
    (kernels built without CONFIG_NET_SCH_NETEM, like this project's CI VM) a userspace
    delay line: in each namespace an nftables rule redirects TCP to the peer (its veth or its
    tunnel address) into a small proxy that forwards every chunk RTT/2 after it arrived (order
    kept; with a bandwidth, each chunk first waits for the chunks before it to leave at that
    rate, as on a link of that speed). Each connection crosses exactly one proxy, so a round
    trip costs one RTT. The proxy ends the party's TCP connection on the same host, so the
    party's own TCP window never limits it; :meth:`throughput_mbit` measures what the delay
    line itself carries. Through the tunnel, the delay line sits before encryption; netem delays
    the encrypted UDP itself.
    """

    MARK = 0x77  # the proxies' own onward connections carry this mark and are not redirected
    PROXY_PORT = 7700
    ECHO_PORT = 7701
    SINK_PORT = 7702

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = (f"cd-h0-{tag}", f"cd-h1-{tag}")
        self.dev = (f"cdv0-{tag}", f"cdv1-{tag}")
        self.wg = (f"cdw0-{tag}", f"cdw1-{tag}")
        self.helpers: list[subprocess.Popen] = []
        self.delay: list[subprocess.Popen] = []
        self.wg_pids: list[int] = []
        self.tunnel = ""  # "", or what carries it: "kernel WireGuard" / "wireguard-go ..."
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
        self.helpers.append(self.spawn(1, "--echo"))
        self.helpers.append(self.spawn(1, "--sink"))

    def open_tunnel(self, keydir: Path, mpc_ports: str, timeout_s: float = 20.0) -> None:
        """WireGuard between the namespaces, set up with ``scripts/mpc_tunnel`` as an operator
        would; returns once both sides have shaken hands."""
        keydir.mkdir(mode=0o700, parents=True, exist_ok=True)
        public = [
            self.run(i, str(MPC_TUNNEL), "keygen", str(keydir / f"host{i}")).stdout.strip()
            for i in (0, 1)
        ]
        self.tunnel = "kernel WireGuard"
        for i in (0, 1):
            peer = f"{public[1 - i]},{ADDR[1 - i]}:{WG_PORT},{TUNNEL_ADDR[1 - i]}"
            self.run(i, str(MPC_TUNNEL), "up", "--ifname", self.wg[i],
                     "--key", str(keydir / f"host{i}" / "private.key"),
                     "--address", f"{TUNNEL_ADDR[i]}/24", "--listen-port", str(WG_PORT),
                     "--peer", peer, "--mpc-ports", mpc_ports)  # fmt: skip
            if pids := _wireguard_go_pids(self.wg[i]):
                self.wg_pids += pids
                self.tunnel = _wireguard_go_version()
        # the first packet through the tunnel starts the handshake; poll until both agree
        deadline = time.monotonic() + timeout_s
        self.ping_ms(TUNNEL_ADDR[1], timeout_s=timeout_s)
        while any(self.run(i, str(MPC_TUNNEL), "check", "--ifname", self.wg[i],
                           check_ok=True).returncode for i in (0, 1)):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("WireGuard handshake did not complete")
            time.sleep(0.2)

    def run(self, i: int, *argv: str, check_ok: bool = False) -> subprocess.CompletedProcess:
        """A command inside namespace ``i`` (``check_ok``: its failure is expected, ignore it)."""
        return sh("ip", "netns", "exec", self.ns[i], *argv, check=not check_ok)

    def spawn(self, i: int, *args: str) -> subprocess.Popen:
        """One of this module's helpers, inside namespace ``i``."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns[i], sys.executable, __file__, *args], cwd=ROOT
        )

    def capture(self, i: int, out: Path, max_s: float = 300.0) -> subprocess.Popen:
        """Every frame on host ``i``'s veth into ``out`` until ``stop_capture`` (or ``max_s``)."""
        proc = self.spawn(i, "--capture", self.dev[i], str(out), "--seconds", f"{max_s:g}")
        self.helpers.append(proc)
        deadline = time.monotonic() + 30
        while not out.exists():  # the socket is bound before the file is created
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("packet capture did not start")
            time.sleep(0.05)
        return proc

    @staticmethod
    def stop_capture(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    def _clear_delay(self) -> None:
        for proc in self.delay:
            proc.terminate()
            proc.wait(timeout=10)
        self.delay.clear()
        for i in (0, 1):
            if self.mode == "tc netem":
                self.run(i, "tc", "qdisc", "del", "dev", self.dev[i], "root", check_ok=True)
            else:
                self.run(i, "nft", "delete", "table", "ip", "cdlat", check_ok=True)

    def set_rtt(self, rtt_ms: float | None, bandwidth_mbit: float | None = None) -> None:
        """RTT/2 each way, at most ``bandwidth_mbit`` each way (None: not limited);
        ``rtt_ms=None``: no delay mechanism at all (the direct baseline)."""
        self._clear_delay()
        if rtt_ms is None:
            return
        for i in (0, 1):
            if self.mode == "tc netem":
                rate = ["rate", f"{bandwidth_mbit:g}mbit"] if bandwidth_mbit else []
                if rtt_ms > 0 or rate:
                    self.run(i, "tc", "qdisc", "add", "dev", self.dev[i], "root",
                             "netem", "delay", f"{rtt_ms / 2:g}ms", *rate)  # fmt: skip
                continue
            peers = f"{{ {ADDR[1 - i]}, {TUNNEL_ADDR[1 - i]} }}"
            rules = (
                "table ip cdlat {\n chain out {\n  type nat hook output priority -100;\n"
                f"  ip daddr {peers} meta l4proto tcp meta mark != {self.MARK} "
                f"redirect to :{self.PROXY_PORT}\n }}\n}}\n"
            )
            subprocess.run(["ip", "netns", "exec", self.ns[i], "nft", "-f", "-"], input=rules,
                           text=True, check=True, capture_output=True)  # fmt: skip
            rate = ["--rate-mbit", f"{bandwidth_mbit:g}"] if bandwidth_mbit else []
            self.delay.append(self.spawn(i, "--proxy", "--delay-ms", f"{rtt_ms / 2:g}", *rate))
        if self.mode != "tc netem":
            time.sleep(1.0)  # the proxies bind their port

    def ping_ms(self, addr: str = ADDR[1], timeout_s: float = 10.0) -> float:
        """Measured application RTT: 1 byte to host 1's echo port and back (median of 7)."""
        probe = (
            "import socket, statistics, time\n"
            f"deadline = time.monotonic() + {timeout_s}\n"
            "while True:\n"
            "    try:\n"
            f"        s = socket.create_connection(('{addr}', {self.ECHO_PORT}), timeout=5)\n"
            "        break\n"
            "    except OSError:\n"
            "        if time.monotonic() > deadline: raise\n"
            "        time.sleep(0.1)\n"
            "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
            "t = []\n"
            "for _ in range(7):\n"
            "    t0 = time.perf_counter(); s.sendall(b'x'); s.recv(1)\n"
            "    t.append(time.perf_counter() - t0)\n"
            "print(statistics.median(t) * 1000)\n"
        )
        return float(self.run(0, sys.executable, "-c", probe).stdout.strip())

    def throughput_mbit(self, addr: str = ADDR[1], megabytes: int = 64) -> float:
        """Measured bulk throughput host 0 -> host 1 (Mbit/s): ``megabytes`` to host 1's sink,
        timed from the first byte sent to the sink's acknowledgement, less one RTT."""
        probe = (
            "import socket, time\n"
            f"n = {megabytes} << 20\n"
            f"s = socket.create_connection(('{addr}', {self.SINK_PORT}), timeout=60)\n"
            "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
            "block = bytes(1 << 20)\n"
            "s.sendall(n.to_bytes(8, 'little')); s.recv(1)\n"  # connection set up, sink ready
            "t0 = time.perf_counter()\n"
            "for _ in range(n >> 20): s.sendall(block)\n"
            "s.recv(1)\n"
            "print(time.perf_counter() - t0)\n"
        )
        seconds = float(self.run(0, sys.executable, "-c", probe).stdout.strip())
        rtt_s = self.ping_ms(addr) / 1000
        return (megabytes << 20) * 8 / max(seconds - rtt_s, 1e-9) / 1e6

    def close(self) -> None:
        for proc in [*self.delay, *self.helpers]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.tunnel:
            for i in (0, 1):
                self.run(i, str(MPC_TUNNEL), "down", "--ifname", self.wg[i], check_ok=True)
        # wireguard-go exits once its interface is gone; it would otherwise keep the
        # namespace alive after `ip netns del`
        deadline = time.monotonic() + 5
        for pid in self.wg_pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        for ns in self.ns:
            sh("ip", "netns", "del", ns, check=False)  # deleting a namespace removes its veth


def _wireguard_go_pids(ifname: str) -> list[int]:
    """The wireguard-go daemon serving exactly this interface (started by mpc_tunnel up)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"wireguard-go", ifname.encode()]:
                pids.append(int(entry.name))
    return pids


def _wireguard_go_version() -> str:
    first = sh("wireguard-go", "--version", check=False).stdout.splitlines()
    return first[0].strip() if first else "wireguard-go"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


async def _pump(reader, writer, delay_s: float, rate_bps: float = 0.0) -> None:
    """Forward one direction, each chunk ``delay_s`` after it left a link of ``rate_bps``
    bits/s (0: no limit) that it entered on arrival (a delay line)."""
    import asyncio

    queue: asyncio.Queue = asyncio.Queue()
    link_free = 0.0  # when the emulated link has sent everything queued so far

    async def read() -> None:
        nonlocal link_free
        while chunk := await reader.read(1 << 20):
            now = time.monotonic()
            link_free = max(now, link_free) + (len(chunk) * 8 / rate_bps if rate_bps else 0.0)
            queue.put_nowait((link_free + delay_s, chunk))
        queue.put_nowait((max(time.monotonic(), link_free) + delay_s, b""))

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


def run_proxy(delay_ms: float, rate_mbit: float = 0.0) -> None:
    """The delay line of one namespace: redirected connections go on to their original
    destination (SO_ORIGINAL_DST), every byte RTT/2 late, at most ``rate_mbit`` each way."""
    import asyncio
    import struct

    delay_s = delay_ms / 1000
    rate_bps = rate_mbit * 1e6

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
                _pump(reader, up_writer, delay_s, rate_bps),
                _pump(up_reader, writer, delay_s, rate_bps),
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
    """Host 1's side of the RTT probe: echo every byte (on the veth and the tunnel alike)."""
    import socketserver

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(64):
                self.request.sendall(data)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("0.0.0.0", TwoHosts.ECHO_PORT), Echo) as server:
        server.serve_forever()


def run_sink() -> None:
    """Host 1's side of the throughput probe: read an 8-byte count, acknowledge, read and
    discard that many bytes, acknowledge again."""
    import socketserver

    class Sink(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            header = b""
            while len(header) < 8 and (part := self.request.recv(8 - len(header))):
                header += part
            left = int.from_bytes(header, "little")
            self.request.sendall(b"r")
            buffer = bytearray(1 << 20)
            while left > 0 and (n := self.request.recv_into(buffer, min(left, len(buffer)))):
                left -= n
            self.request.sendall(b"k")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("0.0.0.0", TwoHosts.SINK_PORT), Sink) as server:
        server.serve_forever()


def run_capture(dev: str, out: Path, seconds: float) -> None:
    """Every frame seen on ``dev`` (both directions), each as a 4-byte length and its bytes,
    until SIGTERM or ``seconds``; the output file appears once the socket listens."""
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.bind((dev, 0))
    sock.settimeout(0.1)
    deadline = time.monotonic() + seconds
    with open(out, "wb") as f:
        while not stop and time.monotonic() < deadline:
            try:
                frame = sock.recv(1 << 16)
            except TimeoutError:
                continue
            f.write(len(frame).to_bytes(4, "little") + frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="internal helpers of TwoHosts")
    parser.add_argument("--proxy", action="store_true")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--rate-mbit", type=float, default=0.0)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--sink", action="store_true")
    parser.add_argument("--capture", nargs=2, metavar=("DEV", "OUT"))
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.proxy:
        run_proxy(args.delay_ms, args.rate_mbit)
    elif args.echo:
        run_echo()
    elif args.sink:
        run_sink()
    elif args.capture:
        run_capture(args.capture[0], Path(args.capture[1]), args.seconds)
    else:
        parser.error("one of --proxy, --echo, --sink, --capture")
    return 0


if __name__ == "__main__":
    sys.exit(main())
