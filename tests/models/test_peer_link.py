"""The parties' direct link on 127.0.0.1: concurrent exchange, one-way messages, refusals."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from models.peer_link import LinkError, PeerLink

TOKEN = b"t" * 32


def linked(party1: Callable[[PeerLink], Any], party0: Callable[[PeerLink], Any]) -> tuple[Any, Any]:
    """Run ``party0`` and ``party1`` on the two ends of a fresh link; both results."""
    listener = PeerLink.listen("127.0.0.1")
    port = listener.getsockname()[1]
    results: dict[int, Any] = {}

    def other() -> None:
        link = PeerLink.connect("127.0.0.1", port, TOKEN)
        try:
            results[1] = party1(link)
        except BaseException as exc:  # surfaced by the assertion below
            results[1] = exc
        finally:
            link.close()

    thread = threading.Thread(target=other)
    thread.start()
    link = PeerLink.accept(listener, TOKEN, timeout_s=30)
    try:
        results[0] = party0(link)
    finally:
        thread.join(timeout=60)
        link.close()
    return results[0], results[1]


def test_exchange_hands_each_party_the_others_tensors():
    a = [torch.arange(5, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)]
    b = [torch.arange(5, dtype=torch.long) * 7, torch.full((2, 3), -4, dtype=torch.long)]
    got0, got1 = linked(lambda link: link.exchange(b), lambda link: link.exchange(a))
    for mine, theirs in zip(a, got1, strict=True):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(b, got0, strict=True):
        assert torch.equal(mine, theirs)


def test_large_messages_both_ways_at_once_do_not_deadlock():
    # far beyond the socket buffers: works only if sending and receiving overlap
    big = torch.randint(-(2**62), 2**62, (6_000_000,), dtype=torch.long)  # 48 MB
    other = big.flip(0)
    got0, got1 = linked(
        lambda link: link.exchange([other])[0], lambda link: link.exchange([big])[0]
    )
    assert torch.equal(got0, other) and torch.equal(got1, big)


def test_one_way_messages_and_objects():
    def sender(link: PeerLink) -> None:
        link.send([torch.tensor([1.5, -2.0])])
        link.send_bytes(b"control message")

    def receiver(link: PeerLink) -> tuple[torch.Tensor, bytes]:
        return link.recv([torch.empty(2)])[0], link.recv_bytes()

    (tensor, data), _ = linked(sender, receiver)
    assert torch.equal(tensor, torch.tensor([1.5, -2.0])) and data == b"control message"


def test_a_message_of_the_wrong_size_means_the_parties_are_out_of_step():
    def receiver(link: PeerLink) -> None:
        link.recv([torch.empty(3, dtype=torch.long)])

    def sender(link: PeerLink) -> None:
        link.send([torch.zeros(4, dtype=torch.long)])

    with pytest.raises(LinkError, match="32 bytes where 24 were expected"):
        linked(sender, receiver)


def test_the_peer_closing_the_link_is_an_error_not_a_hang():
    with pytest.raises(LinkError, match="closed"):
        linked(lambda link: None, lambda link: link.recv([torch.empty(1)]))


def test_a_connection_without_the_token_is_dropped_and_the_party_keeps_waiting():
    listener = PeerLink.listen("127.0.0.1")
    port = listener.getsockname()[1]
    intruder = socket.create_connection(("127.0.0.1", port))
    intruder.sendall(b"x" * 32)
    accepted: list[PeerLink] = []
    thread = threading.Thread(target=lambda: accepted.append(PeerLink.accept(listener, TOKEN)))
    thread.start()
    assert intruder.recv(1) == b""  # closed unanswered
    intruder.close()
    party1 = PeerLink.connect("127.0.0.1", port, TOKEN)
    thread.join(timeout=30)
    assert len(accepted) == 1
    party1.send_bytes(b"hello")
    assert accepted[0].recv_bytes() == b"hello"
    party1.close()
    accepted[0].close()


def test_nobody_connecting_times_out():
    listener = PeerLink.listen("127.0.0.1")
    with pytest.raises(LinkError, match="did not connect"):
        PeerLink.accept(listener, TOKEN, timeout_s=0.2)
