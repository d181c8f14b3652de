"""A comparison in one round: function secret sharing of ``x < 0`` (pure, no I/O, no CrypTen).

CrypTen compares a secret-shared value by converting its shares to bits and adding them in
a 64-bit binary circuit: about 8 rounds and many small operations per comparison. With a
dealer (the provider that already hands out Beaver triples) a comparison needs one opening:
the dealer picks a random mask ``r``, gives each party a key of a *distributed comparison
function* (DCF, Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point
Secure Computation", Eurocrypt 2021, Fig. 1), and the parties open ``y = x + r``. ``y`` is
uniform whatever ``x`` is; each party evaluates its key on ``y`` locally, and the two outputs
are additive shares (mod 2^64) of the answer. Neither key alone says anything about ``r``.

The sign gate (:func:`sign_keys`, :func:`sign_shares`): ``x < 0`` (as a signed 64-bit
integer) is the top bit of ``x = y - r``. With ``y = y_h 2^63 + y_l`` and
``r = r_h 2^63 + r_l``, that bit is ``y_h XOR r_h XOR [y_l < r_l]`` (the last term is the
borrow out of the low 63 bits). ``[y_l < r_l]`` is a DCF on 63 bits with ``alpha = r_l``;
its payload ``beta = 1 - 2 r_h`` and additive shares of ``r_h`` make the parties' outputs
shares of ``r_h XOR [y_l < r_l]``, and the public ``y_h`` flips that locally.

The pseudo-random generator is fixed-key AES-128 in the Matyas-Meyer-Oseas form
(``AES_k(s ^ c) ^ s ^ c`` for three public constants ``c``), the usual choice of FSS
implementations; every array here holds one row per compared value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: the bits of the DCF domain: the low 63 bits of a 64-bit share
DOMAIN_BITS = 63
SEED_BYTES = 16
_LOW = np.uint64((1 << DOMAIN_BITS) - 1)
#: public AES key and tweaks of the PRG (any fixed values: security rests on AES)
_AES = Cipher(algorithms.AES(bytes(range(16))), modes.ECB())
_TWEAKS = np.arange(3, dtype=np.uint8).repeat(SEED_BYTES).reshape(3, SEED_BYTES)
_INT_TWEAKS = tuple(int.from_bytes(bytes([j]) * SEED_BYTES, "little") for j in range(3))
_WORD = (1 << 64) - 1


def _expand(seeds: np.ndarray) -> tuple[np.ndarray, ...]:
    """``G(s)`` for seeds ``(N, 16)`` uint8: ``(s_left, s_right, v_left, v_right, t_left,
    t_right)``; seeds ``(N, 16)``, values ``(N,)`` uint64, control bits ``(N,)`` bool.

    Three AES blocks per seed: the left and the right seed (each control bit is its seed's
    lowest bit, then cleared), and both values; an evaluation needs only two of them."""
    blocks = seeds[:, None, :] ^ _TWEAKS[None, :, :]
    encryptor = _AES.encryptor()
    out = np.frombuffer(encryptor.update(blocks.tobytes()), dtype=np.uint8).reshape(blocks.shape)
    out = out ^ blocks
    controls = (out[:, :2, 0] & 1).astype(bool)  # (N, 2): t_left, t_right
    out[:, :2, 0] &= np.uint8(0xFE)
    values = out[:, 2, :].copy().view(np.uint64)  # (N, 2): v_left, v_right
    return out[:, 0, :], out[:, 1, :], values[:, 0], values[:, 1], controls[:, 0], controls[:, 1]


def _as_value(seeds: np.ndarray) -> np.ndarray:
    """The last seed as a group element (its first 8 bytes, mod 2^64)."""
    return seeds[:, :8].copy().view(np.uint64)[:, 0]


def _signed(negative: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``(-1)^negative * value`` mod 2^64."""
    return np.where(negative, np.uint64(0) - value, value)


def _bit(values: np.ndarray, level: int, bits: int) -> np.ndarray:
    return ((values >> np.uint64(bits - 1 - level)) & np.uint64(1)).astype(bool)


@dataclass(frozen=True)
class ComparisonKey:
    """One party's DCF keys for ``N`` values: its own seeds, and the correction words both
    parties' keys share (levels first: ``(bits, N, ...)``)."""

    seeds: np.ndarray  # (N, 16) uint8, this party's
    cw_seeds: np.ndarray  # (bits, N, 16) uint8
    cw_values: np.ndarray  # (bits, N) uint64
    cw_left: np.ndarray  # (bits, N) bool
    cw_right: np.ndarray  # (bits, N) bool
    cw_last: np.ndarray  # (N,) uint64

    def __len__(self) -> int:
        return int(self.seeds.shape[0])

    def rows(self, start: int, stop: int) -> ComparisonKey:
        """The keys of values ``start..stop`` (each value's key is used once)."""
        return ComparisonKey(
            self.seeds[start:stop],
            self.cw_seeds[:, start:stop],
            self.cw_values[:, start:stop],
            self.cw_left[:, start:stop],
            self.cw_right[:, start:stop],
            self.cw_last[start:stop],
        )


def dcf_keys(
    alpha: np.ndarray, beta: np.ndarray, seeds: tuple[np.ndarray, np.ndarray], bits: int
) -> tuple[ComparisonKey, ComparisonKey]:
    """The dealer's two keys of ``f(x) = beta if x < alpha else 0`` on ``bits``-bit
    unsigned inputs, one per value of ``alpha`` and ``beta`` ((N,) uint64); ``seeds`` are
    the parties' random starting seeds ((N, 16) uint8 each)."""
    s = [seeds[0].copy(), seeds[1].copy()]
    t = [np.zeros(len(alpha), bool), np.ones(len(alpha), bool)]
    carried = np.zeros(len(alpha), np.uint64)
    cw_seeds, cw_values, cw_left, cw_right = [], [], [], []
    for level in range(bits):
        a = _bit(alpha, level, bits)
        n = len(alpha)
        expanded = _expand(np.concatenate(s))  # both parties' seeds in one AES call
        # party b's (s_L, s_R, v_L, v_R, t_L, t_R)
        parts = ([e[:n] for e in expanded], [e[n:] for e in expanded])
        keep_s = [np.where(a[:, None], parts[b][1], parts[b][0]) for b in (0, 1)]
        lose_s = [np.where(a[:, None], parts[b][0], parts[b][1]) for b in (0, 1)]
        keep_v = [np.where(a, parts[b][3], parts[b][2]) for b in (0, 1)]
        lose_v = [np.where(a, parts[b][2], parts[b][3]) for b in (0, 1)]
        keep_t = [np.where(a, parts[b][5], parts[b][4]) for b in (0, 1)]
        s_cw = lose_s[0] ^ lose_s[1]
        v_cw = _signed(t[1], lose_v[1] - lose_v[0] - carried)
        v_cw = v_cw + np.where(a, _signed(t[1], beta), np.uint64(0))  # lose = left: x < alpha
        carried = carried - keep_v[1] + keep_v[0] + _signed(t[1], v_cw)
        t_cw_left = parts[0][4] ^ parts[1][4] ^ a ^ True
        t_cw_right = parts[0][5] ^ parts[1][5] ^ a
        t_cw_keep = np.where(a, t_cw_right, t_cw_left)
        for b in (0, 1):
            s[b] = keep_s[b] ^ np.where(t[b][:, None], s_cw, np.uint8(0))
            t[b] = keep_t[b] ^ (t[b] & t_cw_keep)
        cw_seeds.append(s_cw)
        cw_values.append(v_cw)
        cw_left.append(t_cw_left)
        cw_right.append(t_cw_right)
    last = _signed(t[1], _as_value(s[1]) - _as_value(s[0]) - carried)
    shared = (
        np.stack(cw_seeds),
        np.stack(cw_values),
        np.stack(cw_left),
        np.stack(cw_right),
        last,
    )
    return ComparisonKey(seeds[0], *shared), ComparisonKey(seeds[1], *shared)


def dcf_eval(party: int, key: ComparisonKey, x: np.ndarray, bits: int) -> np.ndarray:
    """Party ``party``'s additive share (mod 2^64) of ``f(x)``, one per value ((N,) uint64).

    The same tree walk as :func:`dcf_keys`, on Python integers: a party evaluates a handful
    of values per forward, where numpy's per-call overhead would cost more than the work
    (measured: 10 ms per value with arrays, under 1 ms like this). One AES call per level
    covers every value."""
    n = len(x)
    points = x.tolist()
    seeds = [int.from_bytes(key.seeds[i].tobytes(), "little") for i in range(n)]
    cw_seeds = [key.cw_seeds[:, i, :].tobytes() for i in range(n)]
    cw_values = [key.cw_values[:, i].tolist() for i in range(n)]
    cw_left = [key.cw_left[:, i].tolist() for i in range(n)]
    cw_right = [key.cw_right[:, i].tolist() for i in range(n)]
    controls = [party] * n
    totals = [0] * n
    encryptor = _AES.encryptor()
    value_tweak = _INT_TWEAKS[2]
    for level in range(bits):
        shift = bits - 1 - level
        sides = [(point >> shift) & 1 for point in points]  # public: the opened value's bits
        blocks = b"".join(
            (seed ^ _INT_TWEAKS[side]).to_bytes(SEED_BYTES, "little")
            + (seed ^ value_tweak).to_bytes(SEED_BYTES, "little")
            for seed, side in zip(seeds, sides, strict=True)
        )
        out = encryptor.update(blocks)
        for i, side in enumerate(sides):
            seed, at = seeds[i], 2 * SEED_BYTES * i
            child = int.from_bytes(out[at : at + 16], "little") ^ seed ^ _INT_TWEAKS[side]
            values = int.from_bytes(out[at + 16 : at + 32], "little") ^ seed ^ value_tweak
            control = child & 1
            child ^= control
            if controls[i]:
                child ^= int.from_bytes(cw_seeds[i][16 * level : 16 * level + 16], "little")
                control ^= (cw_right if side else cw_left)[i][level]
                totals[i] += cw_values[i][level]
            totals[i] += (values >> 64) if side else (values & _WORD)
            seeds[i], controls[i] = child, control
    last = key.cw_last.tolist()
    for i in range(n):
        totals[i] += (seeds[i] & _WORD) + (last[i] if controls[i] else 0)
        totals[i] = (-totals[i] if party else totals[i]) & _WORD
    return np.array(totals, dtype=np.uint64)


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
) -> tuple[SignKey, SignKey]:
    """The dealer's keys for ``x < 0`` with masks ``mask`` ((N,) uint64, uniform and secret);
    party 1's shares of the mask and its top bit are given (drawn from randomness it shares
    with the dealer), party 0's are what makes them add up."""
    top = mask >> np.uint64(DOMAIN_BITS)
    beta = np.uint64(1) - np.uint64(2) * top
    zero, one = dcf_keys(mask & _LOW, beta, seeds, DOMAIN_BITS)
    return (
        SignKey(mask - mask_share_1, top - top_share_1, zero),
        SignKey(mask_share_1, top_share_1, one),
    )


def sign_shares(party: int, key: SignKey, opened: np.ndarray) -> np.ndarray:
    """Party ``party``'s additive share of ``[x < 0]`` (0 or 1, mod 2^64), given the opened
    ``y = x + r`` ((N,) uint64)."""
    borrow_or_top = key.top_share + dcf_eval(party, key.dcf, opened & _LOW, DOMAIN_BITS)
    flip = (opened >> np.uint64(DOMAIN_BITS)).astype(bool)  # y_h: public
    flipped = (np.uint64(1) if party == 0 else np.uint64(0)) - borrow_or_top
    return np.where(flip, flipped, borrow_or_top)
