"""The two parties' direct link: one TCP connection, each protocol round one message each way.

CrypTen sends every round over torch.distributed's gloo. Measured between two network
namespaces (``scripts/bench_multihost.py --probe``), one CrypTen round (an all-reduce of the
two parties' shares) costs about 2 RTT on gloo even for one element, and its batched reveal
issues one all-reduce per tensor. A round between two parties needs less: each party writes
its share and reads the other's *at the same time*, so the round costs RTT/2 plus the bytes
over the bandwidth. This link does exactly that:

* :meth:`PeerLink.exchange` sends this party's tensors (all of a round's tensors in one
  message) while receiving the peer's: a message that fits in the socket's send buffer is
  written at once, a larger one from a sender thread while the calling thread receives;
* one-way steps (reveal to one party, share from one party) are one message, one way;
* socket buffers are sized for the bandwidth-delay product (``buffer_bytes``), so a large
  message is never throttled by TCP windows on a long link; Nagle is off.

Framing: every message is an 8-byte little-endian length and the raw bytes. Both parties know
the shapes of what they expect (every MPC step is symmetric and public), so a length that
differs from the expected one means the parties are out of step: :class:`LinkError`.

Who connects: party 0 (the rendezvous master) listens, party 1 connects and first presents a
one-time token that party 0 handed it over the already established MPC channel; any other
connection is dropped. Between hosts the link goes to party 0's master address, so inside the
WireGuard tunnel when the parties use one (``docs/mpc-link.md``).
"""

from __future__ import annotations

import hmac
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import torch

log = logging.getLogger(__name__)

#: Default socket buffer: covers 1 Gbit/s up to ~250 ms RTT (5 Gbit/s at 50 ms).
DEFAULT_BUFFER_BYTES = 32 << 20
_HEADER = 8
_SMALL = 64 << 10  # below this, header and payload go out as one write
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # Linux: ignore net.core.[wr]mem_max (CAP_NET_ADMIN)
TOKEN_BYTES = 32


class LinkError(ConnectionError):
    """The peer closed the link, or sent a message the protocol did not expect."""


def _size_buffers(sock: socket.socket, buffer_bytes: int) -> None:
    """Ask for ``buffer_bytes`` each way (before connect/listen, so the window scale fits)."""
    if buffer_bytes <= 0:
        return  # the kernel's autotuning
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, buffer_bytes)
        except OSError:  # not root: capped at net.core.[wr]mem_max
            sock.setsockopt(socket.SOL_SOCKET, plain, buffer_bytes)


def _raw(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy().data)


class PeerLink:
    """A connected link to the other party; every call must be mirrored by the peer."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self._sock = sock
        self._outbox: queue.SimpleQueue[tuple[list[memoryview | bytes], Future[None]] | None]
        self._outbox = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="peer-link-send", daemon=True)
        self._sender.start()
        self.bytes_sent = 0  # payload and framing, since the link opened
        self.buffer_bytes: tuple[int, int] = (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )
        # A small message goes out from the calling thread (no thread hand-off per round: on a
        # loaded machine each hand-off can cost a scheduler slice). A larger one goes through
        # the sender thread while this thread receives: written inline, both parties would
        # first fill the other's receive window, then wait on the other's reads (measured on
        # loopback: 19-29 ms per 1 MiB exchange inline, 2-7 ms with the sender thread).
        self._inline_limit = min(_SMALL, self.buffer_bytes[0] // 4)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def listen(host: str, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> socket.socket:
        """Party 0's listening socket on ``host`` (an ephemeral port; all addresses if
        ``host`` is not one of this machine's, e.g. behind NAT)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _size_buffers(listener, buffer_bytes)  # accepted sockets inherit the sizes
        try:
            listener.bind((host, 0))
        except OSError:
            listener.bind(("", 0))
        listener.listen(4)
        return listener

    @classmethod
    def accept(cls, listener: socket.socket, token: bytes, timeout_s: float = 300.0) -> PeerLink:
        """The first connection that presents ``token``; others are closed unanswered."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                listener.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    sock, peer = listener.accept()
                except TimeoutError:
                    raise LinkError("the other party did not connect to the MPC link") from None
                # a connection that does not present the token at once is not the party
                sock.settimeout(min(5.0, max(0.01, deadline - time.monotonic())))
                try:
                    presented = _recv_exact(sock, len(token))
                except (OSError, LinkError):
                    presented = b""
                if hmac.compare_digest(presented, token):
                    return cls(sock)
                log.warning("MPC link: dropped a connection from %s without the token", peer[0])
                sock.close()
        finally:
            listener.close()

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        token: bytes,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        timeout_s: float = 60.0,
    ) -> PeerLink:
        """Party 1's side: connect to party 0 and present the token."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _size_buffers(sock, buffer_bytes)
        sock.settimeout(timeout_s)
        try:
            sock.connect((host, port))
            sock.sendall(token)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def close(self) -> None:
        self._outbox.put(None)
        self._abort()
        self._sock.close()
        self._sender.join(timeout=5)

    def _abort(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ rounds

    def exchange(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Send ``tensors`` and receive the peer's tensors of the same shapes, concurrently."""
        sent = self._post(tensors)
        try:
            received = self.recv(tensors)
        except BaseException:
            self._abort()  # unblocks the sender too
            raise
        sent.result()  # the tensors are not reused before they are on the wire
        return received

    def send(self, tensors: Sequence[torch.Tensor]) -> None:
        """One-way: the peer calls :meth:`recv` with tensors of the same shapes."""
        self._post(tensors).result()

    def recv(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The peer's tensors, shaped and typed like ``like``."""
        out = [torch.empty(t.shape, dtype=t.dtype) for t in like]
        expected = sum(t.numel() * t.element_size() for t in out)
        length = int.from_bytes(_recv_exact(self._sock, _HEADER), "little")
        if length != expected:
            raise LinkError(f"the peer sent {length} bytes where {expected} were expected")
        for tensor in out:
            if tensor.numel():
                _recv_into(self._sock, _raw(tensor))
        return out

    def send_bytes(self, data: bytes) -> None:
        future: Future[None] = Future()
        self.bytes_sent += _HEADER + len(data)
        self._outbox.put(([len(data).to_bytes(_HEADER, "little") + data], future))
        future.result()

    def recv_bytes(self, limit: int = 1 << 30) -> bytes:
        length = int.from_bytes(_recv_exact(self._sock, _HEADER), "little")
        if length > limit:
            raise LinkError(f"the peer announced {length} bytes (limit {limit})")
        return _recv_exact(self._sock, length)

    def _post(self, tensors: Sequence[torch.Tensor]) -> Future[None]:
        views = [_raw(t) for t in tensors if t.numel()]
        total = sum(v.nbytes for v in views)
        header = total.to_bytes(_HEADER, "little")
        parts: list[memoryview | bytes]
        parts = [b"".join([header, *views])] if total < _SMALL else [header, *views]
        future: Future[None] = Future()
        self.bytes_sent += _HEADER + total
        if total > self._inline_limit:
            self._outbox.put((parts, future))
            return future
        try:
            for part in parts:
                self._sock.sendall(part)
        except OSError as exc:
            raise LinkError(f"sending to the peer failed: {exc!r}") from exc
        future.set_result(None)
        return future

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            parts, future = item
            try:
                for part in parts:
                    self._sock.sendall(part)
            except BaseException as exc:  # reported to the caller waiting on the future
                future.set_exception(LinkError(f"sending to the peer failed: {exc!r}"))
            else:
                future.set_result(None)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    view = view.cast("B")
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            raise LinkError("the peer closed the MPC link")
        got += n


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buffer = bytearray(n)
    if n:
        _recv_into(sock, memoryview(buffer))
    return bytes(buffer)
