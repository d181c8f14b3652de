"""``[x > 0]`` on CrypTen shares in one opening (the FSS sign gate of ``models.fss``).

Used where a program compares a few values per image (the unfamiliarity bit): CrypTen's own
comparison converts the shares to bits and runs a 64-bit adder, about 8 rounds. Here the
parties open ``y = -x + r`` once (``r``: the dealer's secret mask, so ``y`` is uniform) and
each evaluates its comparison key locally; the result is an ordinary arithmetic sharing of
0/1, ready to multiply or to open beside other values. Nothing else is opened.

Who deals the keys is the Beaver-triple provider's job, with the same trust:
* ``TFP``: party 0 generates both keys (as it generates every triple) and sends party 1 its
  key: its seeds, its shares of the mask, and the correction words both keys share.
* ``TTP``: the dealer process (``--rank 2``) generates them. Each party's seeds and mask
  shares come from the random generator it already shares with the dealer; the dealer sends
  party 0 the correction words and party 0's share of the mask's top bit, and party 0
  forwards the correction words (which are in its own key anyway) to party 1.

Keys are dealt for ``POOL`` values at a time and used once each; both parties take them in
the same order, so a refill (one message from party 0 to party 1) happens in the same call
on both sides. Keys for a value are about 2 KB.

Cost per comparison: one opening of 8 bytes each way per value, plus the local evaluation
(63 AES calls per value, ``models.fss.dcf_eval``). For large tensors (a ResNet's ReLUs) the
keys (2 KB per value) and the evaluation would cost more than CrypTen's circuit; this gate
is for the few values per image of a detector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models import fss

#: values dealt per refill (a refill costs one message from party 0 and ~20 ms of the dealer)
POOL = 64
#: the TTP server function (``TTPServer.fss_sign_keys``, see :func:`serve_sign_keys`)
TTP_FUNCTION = "fss_sign_keys"


def positive(x: Any) -> Any:
    """``[x > 0]`` elementwise for an MPCTensor ``x``: an MPCTensor of 0/1 at ``x``'s
    fixed-point scale. ``[x > 0] = [-x < 0]``, the sign of ``-x``'s encoding."""
    import crypten

    comm = crypten.communicator.get()
    rank = comm.get_rank()
    negated = x._tensor.share.neg().reshape(-1)
    keys = _dealer(comm).take(negated.numel())
    masked = negated.numpy().view(np.uint64) + keys.mask_share
    opened = open_masked(comm, torch.from_numpy(masked.view(np.int64)))
    bits = fss.sign_shares(rank, keys, opened.numpy().view(np.uint64))
    scale = x._tensor.encoder.scale
    share = torch.from_numpy(bits.view(np.int64)).reshape(x._tensor.share.shape) * scale
    return crypten.mpc.MPCTensor.from_shares(share, precision=x._tensor.encoder._precision_bits)


def open_masked(comm: Any, masked_share: torch.Tensor) -> torch.Tensor:
    """The gate's one opening: ``y = -x + r`` to both parties (uniform: ``r`` is secret)."""
    return comm.all_reduce(masked_share)


class _Dealer:
    """This party's pool of sign keys for one CrypTen session (kept on its communicator)."""

    def __init__(self, comm: Any) -> None:
        self._comm = comm
        self._pool: fss.SignKey | None = None
        self._used = 0

    def take(self, count: int) -> fss.SignKey:
        if self._pool is None or self._used + count > len(self._pool):
            self._pool = self._deal(max(count, POOL))
            self._used = 0
        keys = self._pool.rows(self._used, self._used + count)
        self._used += count
        return keys

    def _deal(self, count: int) -> fss.SignKey:
        import crypten

        provider = crypten.mpc.get_default_provider().NAME
        if provider == "TFP":
            return self._deal_first_party(count)
        if provider == "TTP":
            return self._deal_third_party(count)
        raise ValueError(f"the sign gate needs a TFP or TTP provider, not {provider}")

    def _deal_first_party(self, count: int) -> fss.SignKey:
        """TFP: party 0 deals from the OS's CSPRNG and sends party 1 its whole key."""
        rank = self._comm.get_rank()
        message = torch.empty(_key_words(count, with_party_material=True), dtype=torch.long)
        if rank == 0:
            zero, one = fss.sign_keys(
                fss.random_words(count),
                (fss.random_seeds(count), fss.random_seeds(count)),
                fss.random_words(count),
                fss.random_words(count),
            )
            message.copy_(_pack(one, with_party_material=True))
            self._comm.broadcast(message, 0)
            return zero
        self._comm.broadcast(message, 0)
        return _unpack(message, count)

    def _deal_third_party(self, count: int) -> fss.SignKey:
        """TTP: seeds and mask shares from the generator shared with the dealer; the
        correction words through party 0."""
        from crypten.mpc.provider.ttp_provider import TTPClient

        rank = self._comm.get_rank()
        seeds, mask_share, top_share = _draw(TTPClient.get().get_generator(), count, rank)
        words = torch.empty(_key_words(count, with_party_material=False), dtype=torch.long)
        if rank == 0:
            reply = TTPClient.get().ttp_request(TTP_FUNCTION, None, count)
            top_share = reply[:count].numpy().view(np.uint64).copy()
            words.copy_(reply[count:])
        self._comm.broadcast(words, 0)
        shared = _unpack_correction(words, count)
        assert top_share is not None
        return fss.SignKey(mask_share, top_share, fss.ComparisonKey(seeds, *shared))


def _dealer(comm: Any) -> _Dealer:
    dealer = getattr(comm, "sign_dealer", None)
    if dealer is None:
        dealer = _Dealer(comm)
        comm.sign_dealer = dealer
    return dealer


def _draw(
    generator: torch.Generator, count: int, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Party ``rank``'s seeds, mask share (and for party 1 its top-bit share) from the
    generator it shares with the TTP; the dealer draws the same, in the same order."""
    from crypten.common.rng import generate_random_ring_element

    def words(n: int) -> np.ndarray:
        return generate_random_ring_element((n,), generator=generator).numpy().view(np.uint64)

    seeds = words(2 * count).view(np.uint8).reshape(count, fss.SEED_BYTES).copy()
    mask_share = words(count).copy()
    top_share = words(count).copy() if rank == 1 else None
    return seeds, mask_share, top_share


def _key_words(count: int, *, with_party_material: bool) -> int:
    per_value = fss.DOMAIN_BITS * 4 + 1 + (4 if with_party_material else 0)
    return count * per_value


def _pack(key: fss.SignKey, *, with_party_material: bool) -> torch.Tensor:
    dcf = key.dcf
    parts = [
        dcf.cw_seeds.reshape(-1).view(np.uint64),
        dcf.cw_values.reshape(-1),
        (dcf.cw_left.astype(np.uint64) + 2 * dcf.cw_right.astype(np.uint64)).reshape(-1),
        dcf.cw_last,
    ]
    if with_party_material:
        parts = [dcf.seeds.reshape(-1).view(np.uint64), key.mask_share, key.top_share, *parts]
    return torch.from_numpy(np.concatenate(parts).view(np.int64))


def _unpack_correction(
    words: torch.Tensor, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    flat = words.numpy().view(np.uint64)
    bits = fss.DOMAIN_BITS
    at = 0

    def take(n: int) -> np.ndarray:
        nonlocal at
        chunk = flat[at : at + n]
        at += n
        return chunk

    cw_seeds = take(2 * bits * count).view(np.uint8).reshape(bits, count, fss.SEED_BYTES)
    cw_values = take(bits * count).reshape(bits, count)
    flags = take(bits * count).reshape(bits, count)
    cw_last = take(count)
    left, right = (flags & 1).astype(bool), (flags >> 1).astype(bool)
    return cw_seeds.copy(), cw_values.copy(), left, right, cw_last.copy()


def _unpack(message: torch.Tensor, count: int) -> fss.SignKey:
    """Party 1's whole key as party 0 sent it (TFP)."""
    flat = message.numpy().view(np.uint64)
    seeds = flat[: 2 * count].view(np.uint8).reshape(count, fss.SEED_BYTES).copy()
    mask_share = flat[2 * count : 3 * count].copy()
    top_share = flat[3 * count : 4 * count].copy()
    shared = _unpack_correction(message[4 * count :], count)
    return fss.SignKey(mask_share, top_share, fss.ComparisonKey(seeds, *shared))


def serve_sign_keys() -> None:
    """Teach CrypTen's TTP server (the dealer process) to deal sign keys: a server function
    ``fss_sign_keys(count)`` that draws both parties' material from their generators, as
    :func:`_draw` does on each party, and answers party 0 with its top-bit shares and the
    correction words. Applied by ``models.crypten_compat.load_crypten`` in every process."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    if hasattr(TTPServer, TTP_FUNCTION):
        return

    def fss_sign_keys(self: Any, count: int) -> torch.Tensor:
        generators = self._get_generators(device=self.device)
        seeds0, share0, _ = _draw(generators[0], count, 0)
        seeds1, share1, top1 = _draw(generators[1], count, 1)
        assert top1 is not None
        zero, _ = fss.sign_keys(share0 + share1, (seeds0, seeds1), share1, top1)
        correction = _pack(zero, with_party_material=False)
        top0 = torch.from_numpy(zero.top_share.view(np.int64).copy())
        return torch.cat([top0, correction])

    setattr(TTPServer, TTP_FUNCTION, fss_sign_keys)
