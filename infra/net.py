"""Ports for processes started on this host (tests, the supervisor's rendezvous)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; the caller binds it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (the operator's own host)."""
    if not address:
        return False
    if address == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False
