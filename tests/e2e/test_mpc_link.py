"""The MPC link between two hosts inside WireGuard: nothing of it crosses the wire in the clear.

Two network namespaces stand for two hosts joined by a LAN (a veth pair, ``scripts/twohosts.py``);
``scripts/mpc_tunnel`` brings the tunnel up as ``docs/mpc-link.md`` tells operators to. A raw
capture on the LAN records every frame while two real parties join as ``python -m predictor
--rank 0|1`` does (``models.mpc.init_party``) and multiply one secret-shared tensor by another.
CrypTen's pairwise seeds (with them anyone regenerates the masks of every share) and the
torch.distributed rendezvous keys show on the plain link, so the capture does see plaintext;
over the tunnel, neither shows and no TCP at all crosses the LAN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.twohosts import ADDR, TUNNEL_ADDR, WG_PORT, TwoHosts, tunnel_available

ROOT = Path(__file__).resolve().parents[2]
MPC_PORTS = "29900-29999"  # fenced off the LAN by mpc_tunnel; the plain run uses 29800


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns, WireGuard, a raw capture)"
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"]).returncode != 0:
        return "needs ip netns (Debian: iproute2)"
    return tunnel_available()


WHY_NOT = _why_not()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]


def _party_main() -> None:
    """One party inside its namespace: ``RANK MASTER_ADDR MASTER_PORT``; prints its seeds."""
    import torch

    from models.mpc import PartyConfig, init_party

    rank, master_addr, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    crypten = init_party(PartyConfig(rank=rank, master_port=port, master_addr=master_addr))
    cpu = torch.device("cpu")
    # "next" went to the other party at start, "global" from party 0 to party 1
    seeds = [crypten.generators[key][cpu].initial_seed() for key in ("next", "global")]
    image_share = crypten.cryptensor(torch.tensor([3.0, 4.0]), src=0)
    weight_share = crypten.cryptensor(torch.tensor([5.0, 6.0]), src=1)
    product = (image_share * weight_share).get_plain_text(dst=0)
    crypten.uninit()
    print(json.dumps({"seeds": seeds, "product": None if product is None else product.tolist()}))


def _run_parties(hosts: TwoHosts, master_addr: str, ifnames: tuple[str, str], port: int):
    code = "from tests.e2e.test_mpc_link import _party_main; _party_main()"
    procs = [
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                hosts.ns[rank],
                sys.executable,
                "-c",
                code,
                str(rank),
                master_addr,
                str(port),
            ],  # fmt: skip
            cwd=ROOT,
            env={**os.environ, "GLOO_SOCKET_IFNAME": ifnames[rank]},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def _frames(path: Path) -> list[bytes]:
    data, frames, at = path.read_bytes(), [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "little")
        frames.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return frames


def _ipv4(frame: bytes) -> tuple[int, int, int] | None:
    """(protocol, source port, destination port) of an IPv4 frame, else None."""
    if frame[12:14] != b"\x08\x00":
        return None
    start = 14 + (frame[14] & 0x0F) * 4
    ports = frame[start : start + 4]
    return frame[23], int.from_bytes(ports[:2], "big"), int.from_bytes(ports[2:], "big")


def _on_the_wire(hosts: TwoHosts, tmp_path: Path, master_addr: str, ifnames, port: int):
    """Run both parties while capturing host 1's LAN side; their outputs and every frame."""
    capture = hosts.capture(1, tmp_path / "lan.frames")
    try:
        outs = _run_parties(hosts, master_addr, ifnames, port)
    finally:
        hosts.stop_capture(capture)
    assert outs[0]["product"] == [15.0, 24.0] and outs[1]["product"] is None
    return outs, _frames(tmp_path / "lan.frames")


def _secrets(outs) -> list[bytes]:
    seeds = {seed for out in outs for seed in out["seeds"]}
    return [seed.to_bytes(8, "little") for seed in seeds] + [b"/default_pg/"]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    lab = TwoHosts()
    try:
        lab.open()
        lab.open_tunnel(tmp_path_factory.mktemp("keys"), MPC_PORTS)
        yield lab
    finally:
        lab.close()


def test_the_plain_link_shows_crypten_seeds_and_rendezvous_keys(hosts, tmp_path):
    outs, frames = _on_the_wire(hosts, tmp_path, ADDR[0], hosts.dev, 29800)
    wire = b"".join(frames)
    assert [secret for secret in _secrets(outs) if secret not in wire] == []


def test_over_the_tunnel_no_secret_and_no_tcp_crosses_the_lan(hosts, tmp_path):
    outs, frames = _on_the_wire(hosts, tmp_path, TUNNEL_ADDR[0], hosts.wg, 29900)
    wire = b"".join(frames)
    assert [secret for secret in _secrets(outs) if secret in wire] == []
    headers = [h for h in map(_ipv4, frames) if h is not None]
    assert not [h for h in headers if h[0] == 6]  # TCP: none outside the tunnel
    wireguard = [h for h in headers if h[0] == 17 and WG_PORT in h[1:]]
    assert len(wireguard) > 20  # the MPC traffic crossed the LAN, encrypted


def _connects(hosts: TwoHosts, i: int, addr: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection from host ``i`` to ``addr:port`` opens within ``timeout_s``."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('{addr}', {port}), timeout={timeout_s}).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return hosts.run(i, sys.executable, "-c", probe, check_ok=True).returncode == 0


def test_from_the_lan_neither_the_rendezvous_nor_the_tunnel_address_answers(hosts):
    # a listener on every address of host 0, as torch.distributed's rendezvous store is
    port, serve = 29950, "import socket, time\n"
    serve += f"s = socket.create_server(('0.0.0.0', {port}))\ns.settimeout(0.2)\n"
    serve += "end = time.monotonic() + 60\nwhile time.monotonic() < end:\n"
    serve += "    try: s.accept()[0].close()\n    except TimeoutError: pass\n"
    listener = subprocess.Popen(["ip", "netns", "exec", hosts.ns[0], sys.executable, "-c", serve])
    try:
        assert _poll_connects(hosts, TUNNEL_ADDR[0], port)  # through the tunnel: open
        assert not _connects(hosts, 1, ADDR[0], port, 1.0)  # the LAN address: dropped
        # a LAN neighbour that routes the tunnel address to host 0's LAN side: dropped too
        hosts.run(1, "ip", "route", "add", f"{TUNNEL_ADDR[0]}/32", "via", ADDR[0])
        try:
            assert not _connects(hosts, 1, TUNNEL_ADDR[0], port, 1.0)
        finally:
            hosts.run(1, "ip", "route", "del", f"{TUNNEL_ADDR[0]}/32", "via", ADDR[0])
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def _poll_connects(hosts: TwoHosts, addr: str, port: int, deadline_s: float = 20.0) -> bool:
    end = time.monotonic() + deadline_s
    while not _connects(hosts, 1, addr, port, 1.0):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True
