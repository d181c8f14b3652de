"""``[x > 0]`` and ReLU on CrypTen shares in one opening (the FSS sign gate of ``models.fss``).

CrypTen's own comparison converts the shares to bits and runs a 64-bit adder: about 8
rounds, and ReLU about 10. Here the parties open ``y = -x + r`` once (``r``: the dealer's
secret mask, so ``y`` is uniform) and each evaluates its comparison key locally; the result
is an ordinary arithmetic sharing of 0/1, ready to multiply or to open beside other values.
Nothing else is opened. :func:`relu` multiplies by it: 2 rounds.

Where the sign is compared (:class:`Ring`): the unfamiliarity bit compares a few values
exactly, in CrypTen's 64 bits (:data:`EXACT`). ReLU compares every activation of a network
(557,056 per 128x128 ResNet18 image), so it drops the encoding's 8 lowest bits and compares
in 24 bits (:data:`RELU`): keys and work of 23 tree levels instead of 63, exact for values
up to 32,768 in size and more than 2^-8 away from 0.

Who deals the keys is the Beaver-triple provider's job, with the same trust:
* ``TFP``: party 0 generates both keys (as it generates every triple) and sends party 1 its
  key: its seeds, its shares of the mask, and the correction words both keys share.
* ``TTP``: the dealer process (``--rank 2``) generates them. Each party's seeds and mask
  shares come from the random generator it already shares with the dealer; the dealer sends
  party 0 the correction words and party 0's share of the mask's top bit, and party 0
  forwards the correction words (which are in its own key anyway) to party 1.

Keys are input-independent: :func:`deal_ahead` deals them before the input exists (the
offline phase; ``EncryptedClassifier.prepare`` calls it between forwards), otherwise a
comparison deals its own (at least ``POOL`` values at a time). Each key is used once, and
both parties take them in the same order. A key is about 600 bytes in :data:`RELU` (23
levels of a 16-byte seed and an 8-byte value correction) and about 1.6 KB in :data:`EXACT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import fss

#: values dealt per refill (a refill costs one message from party 0 and ~20 ms of the dealer)
POOL = 64
#: the TTP server function (``TTPServer.fss_sign_keys``, see :func:`serve_sign_keys`)
TTP_FUNCTION = "fss_sign_keys"


def positive(x: Any, ring: Ring | None = None) -> Any:
    """``[x > 0]`` elementwise for an MPCTensor ``x``: an MPCTensor of 0/1 at ``x``'s
    fixed-point scale. ``[x > 0] = [-x < 0]``, the sign of ``-x``'s encoding, compared in
    ``ring`` (default: exactly, in CrypTen's 64 bits)."""
    import crypten

    ring = ring or EXACT
    comm = crypten.communicator.get()
    rank = comm.get_rank()
    reduced = ring.reduce(x._tensor.share.neg().reshape(-1).numpy().view(np.uint64))
    keys = _dealer(comm, ring).take(reduced.size)
    opened = ring.open(comm, reduced + keys.mask_share)
    bits = fss.sign_shares(rank, keys, opened, ring.bits)
    scale = x._tensor.encoder.scale
    share = torch.from_numpy(bits.view(np.int64)).reshape(x._tensor.share.shape) * scale
    return crypten.mpc.MPCTensor.from_shares(share, precision=x._tensor.encoder._precision_bits)


def relu(x: Any) -> Any:
    """``max(x, 0)`` for an MPCTensor: the gate in :data:`RELU` (one opening), then one
    Beaver multiplication, 2 rounds in all (CrypTen's ``relu``: about 10)."""
    return x * positive(x, RELU)


@dataclass(frozen=True, order=True)
class Ring:
    """Where a sign is compared: the ``bits``-bit integers, after dropping the encoding's
    lowest ``dropped`` bits.

    Dropping is local: each party shifts its own share right, and the two shifted shares
    add up to ``floor(v / 2^dropped)`` or one less, modulo ``2^(64 - dropped)`` (the lost
    carry). Keeping the low ``bits`` of that is exact while ``|v| < 2^(bits - 1 + dropped)``
    in the encoding's units. So a comparison in a smaller ring costs fewer DCF levels (one
    per bit) and smaller openings, and is exact for values this large and at least
    ``2^dropped`` units from 0; closer to 0 the lost carry can flip the sign of a value
    just above it."""

    bits: int = 64
    dropped: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 64 - self.dropped:
            raise ValueError(f"a ring of {self.bits} bits after dropping {self.dropped}")

    def reduce(self, shares: np.ndarray) -> np.ndarray:
        """This party's share of ``floor(v / 2^dropped)`` (or 1 less), mod 2^bits."""
        return (shares >> np.uint64(self.dropped)) & self.mask

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    def open(self, comm: Any, masked_share: np.ndarray) -> np.ndarray:
        """Open ``y = v + r`` mod 2^bits: 4-byte words where they suffice."""
        masked_share = masked_share & self.mask
        narrow = self.bits <= 32
        words = (
            masked_share.astype(np.uint32).view(np.int32) if narrow else masked_share.view(np.int64)
        )
        opened = open_masked(comm, torch.from_numpy(words)).numpy()
        return (
            opened.view(np.uint32).astype(np.uint64) if narrow else opened.view(np.uint64)
        ) & self.mask


#: the exact sign of a 64-bit encoding (the unfamiliarity bit's comparison)
EXACT = Ring()
#: ReLU's comparison: exact for |x| < 2^15 = 32,768 at CrypTen's 16 fractional bits; a value
#: in (-2^-8, 0] can pass as positive, so ReLU can return it instead of 0 (error < 0.004)
RELU = Ring(bits=24, dropped=8)


def open_masked(comm: Any, masked_share: torch.Tensor) -> torch.Tensor:
    """The gate's one opening: ``y = -x + r`` to both parties (uniform: ``r`` is secret)."""
    return comm.all_reduce(masked_share)


class _Dealer:
    """This party's pool of sign keys in one ring, for one CrypTen session (kept on its
    communicator)."""

    def __init__(self, comm: Any, ring: Ring) -> None:
        self._comm = comm
        self._ring = ring
        self._pool: fss.SignKey | None = None
        self._used = 0
        #: values compared in this ring so far (what :func:`taken` reports)
        self.taken = 0

    def take(self, count: int) -> fss.SignKey:
        self.reserve(count, at_least=POOL)
        assert self._pool is not None
        keys = self._pool.rows(self._used, self._used + count)
        self._used += count
        self.taken += count
        return keys

    def reserve(self, count: int, at_least: int = 0) -> None:
        """Make sure the next ``count`` values need no dealing (a pool that cannot serve
        them all is dropped: unused keys are just never used)."""
        if self._pool is None or self._used + count > len(self._pool):
            self._pool = self._deal(max(count, at_least))
            self._used = 0

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
        bits = self._ring.bits
        message = torch.empty(_key_words(count, bits, with_party_material=True), dtype=torch.long)
        if rank == 0:
            zero, one = fss.sign_keys(
                fss.random_words(count),
                (fss.random_seeds(count), fss.random_seeds(count)),
                fss.random_words(count),
                fss.random_words(count),
                bits,
            )
            _pack(one, message, with_party_material=True)
            self._comm.broadcast(message, 0)
            return zero
        self._comm.broadcast(message, 0)
        return _unpack(message, count, bits)

    def _deal_third_party(self, count: int) -> fss.SignKey:
        """TTP: seeds and mask shares from the generator shared with the dealer; the
        correction words through party 0."""
        from crypten.mpc.provider.ttp_provider import TTPClient

        rank = self._comm.get_rank()
        bits = self._ring.bits
        seeds, mask_share, top_share = _draw(TTPClient.get().get_generator(), count, rank)
        words = torch.empty(_key_words(count, bits, with_party_material=False), dtype=torch.long)
        if rank == 0:
            reply = TTPClient.get().ttp_request(TTP_FUNCTION, None, count, bits)
            top_share = reply[:count].numpy().view(np.uint64).copy()
            words.copy_(reply[count:])
        self._comm.broadcast(words, 0)
        fields = _unpack_fields(words, count, bits, with_party_material=False)
        assert top_share is not None
        return fss.SignKey(mask_share, top_share, _comparison_key(seeds, fields))


def taken(comm: Any) -> dict[Ring, int]:
    """Values this party has compared so far, per ring (both parties count the same)."""
    return {ring: dealer.taken for ring, dealer in getattr(comm, "sign_dealers", {}).items()}


def deal_ahead(comm: Any, counts: dict[Ring, int]) -> None:
    """The offline phase: deal now the keys of the next ``counts[ring]`` comparisons in each
    ring, so that they cost only their opening when the input arrives. Both parties call
    it with the same counts (each ring's dealing is one message, in the rings' order)."""
    for ring in sorted(counts):
        if counts[ring] > 0:
            _dealer(comm, ring).reserve(counts[ring])


def _dealer(comm: Any, ring: Ring) -> _Dealer:
    dealers = getattr(comm, "sign_dealers", None)
    if dealers is None:
        dealers = comm.sign_dealers = {}
    if ring not in dealers:
        dealers[ring] = _Dealer(comm, ring)
    return dealers[ring]


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


def _key_words(count: int, ring_bits: int, *, with_party_material: bool) -> int:
    """64-bit words of ``count`` keys: per level a seed (2) and a value (1) correction;
    the control-bit corrections (one word per side) and the last value correction."""
    per_value = (ring_bits - 1) * 3 + 3 + (4 if with_party_material else 0)
    return count * per_value


def _segments(count: int, ring_bits: int, *, with_party_material: bool) -> list[tuple[str, int]]:
    """The message's fields in order, and their lengths in words."""
    bits = ring_bits - 1
    party = [("seeds", 2 * count), ("mask_share", count), ("top_share", count)]
    shared = [
        ("cw_seeds", 2 * bits * count),
        ("cw_values", bits * count),
        ("cw_left", count),
        ("cw_right", count),
        ("cw_last", count),
    ]
    return [*party, *shared] if with_party_material else shared


def _pack(key: fss.SignKey, into: torch.Tensor, *, with_party_material: bool) -> None:
    """Write ``key`` into the message ``into`` (int64 words), field by field, no copies."""
    dcf = key.dcf
    fields = {
        "seeds": dcf.seeds,
        "mask_share": key.mask_share,
        "top_share": key.top_share,
        "cw_seeds": dcf.cw_seeds,
        "cw_values": dcf.cw_values,
        "cw_left": dcf.cw_left,
        "cw_right": dcf.cw_right,
        "cw_last": dcf.cw_last,
    }
    words = into.numpy().view(np.uint64)
    at = 0
    ring_bits = dcf.cw_values.shape[0] + 1
    for name, size in _segments(len(key), ring_bits, with_party_material=with_party_material):
        words[at : at + size] = np.ascontiguousarray(fields[name]).reshape(-1).view(np.uint64)
        at += size


def _unpack_fields(
    words: torch.Tensor, count: int, ring_bits: int, *, with_party_material: bool
) -> dict[str, np.ndarray]:
    """The fields of a message (views into it)."""
    flat = words.numpy().view(np.uint64)
    bits = ring_bits - 1
    shapes = {
        "seeds": (count, fss.SEED_BYTES),
        "cw_seeds": (bits, count, fss.SEED_BYTES),
        "cw_values": (bits, count),
    }
    fields, at = {}, 0
    for name, size in _segments(count, ring_bits, with_party_material=with_party_material):
        chunk = flat[at : at + size]
        at += size
        if name in ("seeds", "cw_seeds"):  # 16-byte seeds
            chunk = chunk.view(np.uint8)
        fields[name] = chunk.reshape(shapes[name]) if name in shapes else chunk
    return fields


def _comparison_key(seeds: np.ndarray, fields: dict[str, np.ndarray]) -> fss.ComparisonKey:
    names = ("cw_seeds", "cw_values", "cw_left", "cw_right", "cw_last")
    return fss.ComparisonKey(seeds, *(fields[name] for name in names))


def _unpack(message: torch.Tensor, count: int, ring_bits: int) -> fss.SignKey:
    """Party 1's whole key as party 0 sent it (TFP)."""
    fields = _unpack_fields(message, count, ring_bits, with_party_material=True)
    dcf = _comparison_key(fields["seeds"], fields)
    return fss.SignKey(fields["mask_share"], fields["top_share"], dcf)


def serve_sign_keys() -> None:
    """Teach CrypTen's TTP server (the dealer process) to deal sign keys: a server function
    ``fss_sign_keys(count)`` that draws both parties' material from their generators, as
    :func:`_draw` does on each party, and answers party 0 with its top-bit shares and the
    correction words. Applied by ``models.crypten_compat.load_crypten`` in every process."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    if hasattr(TTPServer, TTP_FUNCTION):
        return

    def fss_sign_keys(self: Any, count: int, ring_bits: int) -> torch.Tensor:
        generators = self._get_generators(device=self.device)
        seeds0, share0, _ = _draw(generators[0], count, 0)
        seeds1, share1, top1 = _draw(generators[1], count, 1)
        assert top1 is not None
        zero, _ = fss.sign_keys(share0 + share1, (seeds0, seeds1), share1, top1, ring_bits)
        reply = torch.empty(
            count + _key_words(count, ring_bits, with_party_material=False), dtype=torch.long
        )
        reply[:count] = torch.from_numpy(zero.top_share.view(np.int64))
        _pack(zero, reply[count:], with_party_material=False)
        return reply

    setattr(TTPServer, TTP_FUNCTION, fss_sign_keys)
