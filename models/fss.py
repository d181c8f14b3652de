"""A comparison in one round: function secret sharing of ``x < 0`` (pure, no I/O, no CrypTen).

CrypTen compares a secret-shared value by converting its shares to bits and adding them in
a 64-bit binary circuit: about 8 rounds and many small operations per comparison. With a
dealer (the provider that already hands out Beaver triples) a comparison needs one opening:
the dealer picks a random mask ``r``, gives each party a key of a *distributed comparison
function* (DCF, Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point
Secure Computation", Eurocrypt 2021, Fig. 1), and the parties open ``y = x + r``. ``y`` is
uniform whatever ``x`` is; each party evaluates its key on ``y`` locally, and the two outputs
are additive shares (mod 2^64) of the answer. Neither key alone says anything about ``r``.

The sign gate (:func:`sign_keys`, :func:`sign_shares`), in the ring of ``n``-bit integers
(``n`` = 64 for CrypTen's shares; smaller after ``models.sign_gate.Ring`` reduces them):
``x < 0`` is the top bit of ``x = y - r``. With ``y = y_h 2^(n-1) + y_l`` and
``r = r_h 2^(n-1) + r_l``, that bit is ``y_h XOR r_h XOR [y_l < r_l]`` (the last term is the
borrow out of the low ``n - 1`` bits). ``[y_l < r_l]`` is a DCF on ``n - 1`` bits with
``alpha = r_l``; its payload ``beta = 1 - 2 r_h`` and additive shares of ``r_h`` make the
parties' outputs shares of ``r_h XOR [y_l < r_l]``, and the public ``y_h`` flips that
locally. A key costs one tree level, about 24 bytes, per bit of the domain.

The pseudo-random generator is fixed-key AES-128 in the Matyas-Meyer-Oseas form
(``AES_k(s ^ c) ^ s ^ c`` for three public constants ``c``), the usual choice of FSS
implementations: one OpenSSL call per tree level covers every value, and the walk between
those calls is compiled (numba), one pass over the values per level. Every array here holds
one row per compared value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: the bits of the DCF domain of a 64-bit sign: the low 63 bits of a share
DOMAIN_BITS = 63
SEED_BYTES = 16
#: public AES key and tweaks of the PRG (any fixed values: security rests on AES)
_AES = Cipher(algorithms.AES(bytes(range(16))), modes.ECB())


# The tree walks, compiled (numba): one pass over the values per level, around one AES call.
# Seeds are two little-endian 64-bit words (the 16 bytes of an AES block); the control bit
# of a child is its seed's lowest bit, then cleared; the value block holds v_left, v_right.
_ZERO, _ONE = np.uint64(0), np.uint64(1)
_TWEAK_WORDS = np.array(
    [int.from_bytes(bytes([j]) * 8, "little") for j in range(3)], dtype=np.uint64
)


@numba.njit(cache=True)
def _eval_blocks(seeds, x, shift, tweaks, blocks):
    """Per value, the AES inputs of the child on ``x``'s side and of the value block."""
    for i in range(seeds.shape[0]):
        side = (x[i] >> shift) & _ONE
        blocks[i, 0] = seeds[i, 0] ^ tweaks[side]
        blocks[i, 1] = seeds[i, 1] ^ tweaks[side]
        blocks[i, 2] = seeds[i, 0] ^ tweaks[2]
        blocks[i, 3] = seeds[i, 1] ^ tweaks[2]


@numba.njit(cache=True)
def _eval_step(
    out, blocks, x, shift, level, seeds, controls, totals, cw_seeds, cw_values, cw_left, cw_right
):
    """One level of a party's walk: the child seed and control bit, the value so far."""
    for i in range(seeds.shape[0]):
        side = (x[i] >> shift) & _ONE
        s0 = out[i, 0] ^ blocks[i, 0]
        s1 = out[i, 1] ^ blocks[i, 1]
        control = s0 & _ONE
        s0 ^= control
        value = (out[i, 3] ^ blocks[i, 3]) if side else (out[i, 2] ^ blocks[i, 2])
        if controls[i]:
            s0 ^= cw_seeds[i, 0]
            s1 ^= cw_seeds[i, 1]
            control ^= ((cw_right[i] if side else cw_left[i]) >> level) & _ONE
            value += cw_values[i]
        totals[i] += value
        seeds[i, 0] = s0
        seeds[i, 1] = s1
        controls[i] = control


@numba.njit(cache=True)
def _eval_finish(seeds, controls, cw_last, negate, totals):
    for i in range(seeds.shape[0]):
        total = totals[i] + seeds[i, 0] + (cw_last[i] if controls[i] else _ZERO)
        totals[i] = _ZERO - total if negate else total


@numba.njit(cache=True)
def _key_blocks(seeds, tweaks, blocks):
    """Both parties' AES inputs: left child, right child, value block."""
    for b in range(2):
        for i in range(seeds.shape[1]):
            for j in range(3):
                blocks[b, i, j, 0] = seeds[b, i, 0] ^ tweaks[j]
                blocks[b, i, j, 1] = seeds[b, i, 1] ^ tweaks[j]


@numba.njit(cache=True, inline="always")
def _low_bits(out, blocks, i, child):
    """XOR of both parties' control bits of a child."""
    return (
        (out[0, i, child, 0] ^ blocks[0, i, child, 0])
        ^ (out[1, i, child, 0] ^ blocks[1, i, child, 0])
    ) & _ONE


@numba.njit(cache=True)
def _key_step(
    out,
    blocks,
    alpha,
    shift,
    level,
    beta,
    seeds,
    controls,
    carried,
    cw_seeds,
    cw_values,
    cw_left,
    cw_right,
):
    """One level of the dealer's walk down both trees along ``alpha``: the correction words
    that keep the two walks' seeds equal off the path and make the values add up to
    ``beta`` exactly where a point leaves the path to the left (``x < alpha``)."""
    for i in range(seeds.shape[1]):
        a = (alpha[i] >> shift) & _ONE
        keep, lose = (1, 0) if a else (0, 1)
        lose_s0 = (out[0, i, lose, 0] ^ blocks[0, i, lose, 0]) ^ (
            out[1, i, lose, 0] ^ blocks[1, i, lose, 0]
        )
        lose_s1 = (out[0, i, lose, 1] ^ blocks[0, i, lose, 1]) ^ (
            out[1, i, lose, 1] ^ blocks[1, i, lose, 1]
        )
        # the seeds' control bits are their lowest bits; the correction clears them too
        t_left = _low_bits(out, blocks, i, 0)
        t_right = _low_bits(out, blocks, i, 1)
        lose_s0 &= ~_ONE
        cw_left_i = t_left ^ a ^ _ONE
        cw_right_i = t_right ^ a
        cw_keep = cw_right_i if a else cw_left_i
        keep_v0 = out[0, i, 2, keep] ^ blocks[0, i, 2, keep]
        keep_v1 = out[1, i, 2, keep] ^ blocks[1, i, 2, keep]
        lose_v0 = out[0, i, 2, lose] ^ blocks[0, i, 2, lose]
        lose_v1 = out[1, i, 2, lose] ^ blocks[1, i, 2, lose]
        negative = controls[1, i] != _ZERO
        v_cw = lose_v1 - lose_v0 - carried[i]
        if a:
            v_cw += beta[i]  # leaving to the left of alpha: x < alpha
        if negative:
            v_cw = _ZERO - v_cw
        carried[i] = carried[i] - keep_v1 + keep_v0 + (_ZERO - v_cw if negative else v_cw)
        for b in range(2):
            s0 = out[b, i, keep, 0] ^ blocks[b, i, keep, 0]
            s1 = out[b, i, keep, 1] ^ blocks[b, i, keep, 1]
            t_keep = s0 & _ONE
            s0 ^= t_keep
            if controls[b, i]:
                s0 ^= lose_s0
                s1 ^= lose_s1
                t_keep ^= cw_keep
            seeds[b, i, 0] = s0
            seeds[b, i, 1] = s1
            controls[b, i] = t_keep
        cw_seeds[i, 0] = lose_s0
        cw_seeds[i, 1] = lose_s1
        cw_values[i] = v_cw
        cw_left[i] |= cw_left_i << level
        cw_right[i] |= cw_right_i << level


@numba.njit(cache=True)
def _key_last(seeds, controls, carried):
    last = np.empty(seeds.shape[1], np.uint64)
    for i in range(seeds.shape[1]):
        value = seeds[1, i, 0] - seeds[0, i, 0] - carried[i]
        last[i] = _ZERO - value if controls[1, i] else value
    return last


@dataclass(frozen=True)
class ComparisonKey:
    """One party's DCF keys for ``N`` values: its own seeds, and the correction words both
    parties' keys share (levels first: ``(bits, N, ...)``)."""

    seeds: np.ndarray  # (N, 16) uint8, this party's
    cw_seeds: np.ndarray  # (bits, N, 16) uint8
    cw_values: np.ndarray  # (bits, N) uint64
    #: the control-bit corrections of each side, packed: bit ``level`` of a value's word
    cw_left: np.ndarray  # (N,) uint64
    cw_right: np.ndarray  # (N,) uint64
    cw_last: np.ndarray  # (N,) uint64

    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    def rows(self, start: int, stop: int) -> ComparisonKey:
        """The keys of values ``start..stop`` (each value's key is used once)."""
        return ComparisonKey(
            self.seeds[start:stop],
            self.cw_seeds[:, start:stop],
            self.cw_values[:, start:stop],
            self.cw_left[start:stop],
            self.cw_right[start:stop],
            self.cw_last[start:stop],
        )


class _AESBlocks:
    """Fixed-key AES-128 of every 16-byte block of an array, into an output kept for the
    whole walk (OpenSSL writes straight into it: no copy of every level's blocks)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self._encryptor = _AES.encryptor()
        # OpenSSL asks for one block of slack past the data
        self._out = np.empty(blocks.size + 2, np.uint64)
        self._shape = blocks.shape

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        self._encryptor.update_into(blocks.data.cast("B"), self._out.data.cast("B"))  # type: ignore[arg-type]
        return self._out[: blocks.size].reshape(self._shape)


def dcf_keys(
    alpha: np.ndarray, beta: np.ndarray, seeds: tuple[np.ndarray, np.ndarray], bits: int
) -> tuple[ComparisonKey, ComparisonKey]:
    """The dealer's two keys of ``f(x) = beta if x < alpha else 0`` on ``bits``-bit
    unsigned inputs, one per value of ``alpha`` and ``beta`` ((N,) uint64); ``seeds`` are
    the parties' random starting seeds ((N, 16) uint8 each)."""
    n = len(alpha)
    alpha, beta = _words(alpha), _words(beta)
    walk = np.stack([seeds[0], seeds[1]]).view(np.uint64).reshape(2, n, 2).copy()
    controls = np.zeros((2, n), np.uint64)
    controls[1] = 1
    carried = np.zeros(n, np.uint64)
    cw_seeds = np.empty((bits, n, 2), np.uint64)
    cw_values = np.empty((bits, n), np.uint64)
    cw_left = np.zeros(n, np.uint64)
    cw_right = np.zeros(n, np.uint64)
    blocks = np.empty((2, n, 3, 2), np.uint64)
    aes = _AESBlocks(blocks)
    for level in range(bits):
        _key_blocks(walk, _TWEAK_WORDS, blocks)
        out = aes(blocks)
        shift = np.uint64(bits - 1 - level)
        _key_step(
            out, blocks, alpha, shift, np.uint64(level), beta, walk, controls, carried,
            cw_seeds[level], cw_values[level], cw_left, cw_right,
        )  # fmt: skip
    last = _key_last(walk, controls, carried)
    shared = (cw_seeds.view(np.uint8).reshape(bits, n, SEED_BYTES), cw_values, cw_left, cw_right)
    return (
        ComparisonKey(seeds[0], *shared, last),
        ComparisonKey(seeds[1], *shared, last),
    )


def dcf_eval(party: int, key: ComparisonKey, x: np.ndarray, bits: int) -> np.ndarray:
    """Party ``party``'s additive share (mod 2^64) of ``f(x)``, one per value ((N,) uint64):
    the dealer's walk, on ``x``'s path only, two AES blocks per value and level."""
    n = len(x)
    x = _words(x)
    walk = np.ascontiguousarray(key.seeds).view(np.uint64).reshape(n, 2).copy()
    controls = np.full(n, party, np.uint64)
    totals = np.zeros(n, np.uint64)
    blocks = np.empty((n, 4), np.uint64)
    aes = _AESBlocks(blocks)
    for level in range(bits):
        shift = np.uint64(bits - 1 - level)
        _eval_blocks(walk, x, shift, _TWEAK_WORDS, blocks)
        out = aes(blocks)
        cw_seeds = np.ascontiguousarray(key.cw_seeds[level]).view(np.uint64).reshape(n, 2)
        _eval_step(
            out, blocks, x, shift, np.uint64(level), walk, controls, totals,
            cw_seeds, key.cw_values[level], key.cw_left, key.cw_right,
        )  # fmt: skip
    _eval_finish(walk, controls, key.cw_last, party == 1, totals)
    return totals


def _words(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.uint64)


@dataclass(frozen=True)
class SignKey:
    """One party's material for ``N`` sign tests: its shares of the mask ``r`` and of its
    top bit ``r_h`` (uint64, mod 2^64), and its DCF key for ``[y_l < r_l]``."""

    mask_share: np.ndarray
    top_share: np.ndarray
    dcf: ComparisonKey

    def __len__(self) -> int:
        return len(self.dcf)

    def rows(self, start: int, stop: int) -> SignKey:
        return SignKey(
            self.mask_share[start:stop], self.top_share[start:stop], self.dcf.rows(start, stop)
        )


def random_words(count: int) -> np.ndarray:
    """``count`` uniform 64-bit words from the operating system's CSPRNG."""
    return np.frombuffer(os.urandom(8 * count), dtype=np.uint64).copy()


def random_seeds(count: int) -> np.ndarray:
    return np.frombuffer(os.urandom(SEED_BYTES * count), dtype=np.uint8).reshape(count, -1).copy()


def sign_keys(
    mask: np.ndarray,
    seeds: tuple[np.ndarray, np.ndarray],
    mask_share_1: np.ndarray,
    top_share_1: np.ndarray,
    ring_bits: int = 64,
) -> tuple[SignKey, SignKey]:
    """The dealer's keys for ``x < 0`` in the ring of ``ring_bits``-bit integers, with
    masks ``mask`` ((N,) uint64, uniform and secret; taken mod 2^ring_bits); party 1's
    shares of the mask and its top bit are given (drawn from randomness it shares with the
    dealer), party 0's are what makes them add up."""
    low_bits = ring_bits - 1
    top = (mask >> np.uint64(low_bits)) & np.uint64(1)
    beta = np.uint64(1) - np.uint64(2) * top
    zero, one = dcf_keys(mask & _low_mask(low_bits), beta, seeds, low_bits)
    return (
        SignKey(mask - mask_share_1, top - top_share_1, zero),
        SignKey(mask_share_1, top_share_1, one),
    )


def sign_shares(party: int, key: SignKey, opened: np.ndarray, ring_bits: int = 64) -> np.ndarray:
    """Party ``party``'s additive share (mod 2^64) of ``[x < 0]`` (0 or 1), given the
    opened ``y = x + r`` ((N,) uint64, mod 2^ring_bits)."""
    low_bits = ring_bits - 1
    low = opened & _low_mask(low_bits)
    borrow_or_top = key.top_share + dcf_eval(party, key.dcf, low, low_bits)
    flip = ((opened >> np.uint64(low_bits)) & np.uint64(1)).astype(bool)  # y_h: public
    flipped = (np.uint64(1) if party == 0 else np.uint64(0)) - borrow_or_top
    return np.where(flip, flipped, borrow_or_top)


def _low_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)
