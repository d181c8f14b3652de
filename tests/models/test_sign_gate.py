"""The one-opening comparison: the DCF and the sign gate are exact, on both providers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import fss
from models.mpc import run_parties

WORD = st.integers(min_value=0, max_value=2**64 - 1)
SIGNED = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _words(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def _pair(count: int) -> tuple[np.ndarray, np.ndarray]:
    return fss.random_seeds(count), fss.random_seeds(count)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(WORD, WORD, WORD), min_size=1, max_size=12))
def test_the_two_dcf_shares_add_up_to_beta_below_alpha_and_zero_elsewhere(cases):
    low = (1 << fss.DOMAIN_BITS) - 1
    alpha = _words([a & low for a, _, _ in cases])
    beta = _words([b for _, b, _ in cases])
    # each point at, just below, just above alpha, and anywhere
    points = []
    for (_, _, anywhere), a in zip(cases, alpha.tolist(), strict=True):
        points += [a, (a - 1) & low, (a + 1) & low, anywhere & low]
    x = _words(points)
    alpha4, beta4 = np.repeat(alpha, 4), np.repeat(beta, 4)
    zero, one = fss.dcf_keys(alpha4, beta4, _pair(len(x)), fss.DOMAIN_BITS)
    total = fss.dcf_eval(0, zero, x, fss.DOMAIN_BITS) + fss.dcf_eval(1, one, x, fss.DOMAIN_BITS)
    assert total.tolist() == np.where(x < alpha4, beta4, np.uint64(0)).tolist()


@settings(max_examples=25, deadline=None)
@given(st.lists(SIGNED, min_size=1, max_size=16))
def test_the_sign_shares_add_up_to_x_below_zero(values):
    values += [0, -1, 1, -(2**63), 2**63 - 1]
    x = np.array(values, dtype=np.int64).view(np.uint64)
    mask = fss.random_words(len(x))
    zero, one = fss.sign_keys(
        mask, _pair(len(x)), fss.random_words(len(x)), fss.random_words(len(x))
    )
    opened = x + mask  # what the parties open: uniform whatever x is
    total = fss.sign_shares(0, zero, opened) + fss.sign_shares(1, one, opened)
    assert total.tolist() == [int(v < 0) for v in values]


def test_one_key_alone_is_random_looking_and_keys_are_used_once():
    mask = fss.random_words(64)
    zero, one = fss.sign_keys(mask, _pair(64), fss.random_words(64), fss.random_words(64))
    # the correction words are common to both keys, the seeds and shares are not
    assert np.array_equal(zero.dcf.cw_values, one.dcf.cw_values)
    assert not np.array_equal(zero.dcf.seeds, one.dcf.seeds)
    assert zero.mask_share.tolist() != mask.tolist()
    assert len(zero.rows(3, 10)) == 7 and zero.rows(3, 10).dcf.cw_seeds.shape[1] == 7
    # a party's share of the mask's top bit alone says nothing: not 0/1
    assert set((zero.top_share + one.top_share).tolist()) <= {0, 1}
    assert not set(zero.top_share.tolist()) <= {0, 1}


def _gate_party(rank, values, rounds_of):
    from models.crypten_compat import load_crypten
    from models.sign_gate import POOL, positive

    crypten = load_crypten()
    comm = crypten.communicator.get()
    x = crypten.cryptensor(torch.tensor(values) if rank == 0 else torch.empty(len(values)), src=0)
    results = []
    # more values than one pool holds: the refills happen in step on both parties
    for _ in range(2 * POOL // len(values) + 2):
        results.append(positive(x).get_plain_text().tolist())
    crypten.cfg.communicator.verbose = True  # count rounds
    comm.reset_communication_stats()
    positive(crypten.cryptensor(torch.zeros(rounds_of)))
    stats = comm.get_communication_stats()
    return results, stats["rounds"]


@pytest.mark.parametrize("provider", ["TFP", "TTP"])
def test_the_gate_compares_secret_shared_values_in_one_round(provider):
    values = [3.5, -2.0, 0.0, 1e-4, -1e-4, 12000.0, -12000.0, 0.25, -0.25]
    results = run_parties(_gate_party, values, 1, provider=provider)
    expected = [1.0 if v > 0 else 0.0 for v in values]
    for party_results, rounds in results[:2]:
        assert all(result == expected for result in party_results)
        assert rounds == 1  # one opening (the keys were dealt before)


RELU_RING_LIMIT = 2 ** (22 + 8)  # RELU: exact for |v| < 2^(bits - 1 + dropped) units


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-RELU_RING_LIMIT + 1, RELU_RING_LIMIT - 1), min_size=1, max_size=16),
    st.integers(0, 2**64 - 1),
)
def test_a_sign_in_a_smaller_ring_is_exact_but_within_the_dropped_bits_of_zero(values, split):
    from models.sign_gate import RELU

    values += [0, 1, -1, 255, 256, -256, -257, RELU_RING_LIMIT - 1, 1 - RELU_RING_LIMIT]
    v = np.array(values, dtype=np.int64).view(np.uint64)
    share_1 = fss.random_words(len(v)) ^ np.uint64(split)  # any split of v into two shares
    share_0 = v - share_1
    reduced = [RELU.reduce(share) for share in (share_0, share_1)]
    mask = fss.random_words(len(v))
    zero, one = fss.sign_keys(
        mask, _pair(len(v)), fss.random_words(len(v)), fss.random_words(len(v)), RELU.bits
    )
    opened = (reduced[0] + reduced[1] + mask) & RELU.mask
    negative = fss.sign_shares(0, zero, opened, RELU.bits) + fss.sign_shares(1, one, opened, RELU.bits)  # fmt: skip
    for value, bit in zip(values, negative.tolist(), strict=True):
        if 0 <= value < 2**RELU.dropped:  # the lost carry may make it -1
            assert bit in (0, 1)
        else:
            assert bit == int(value < 0), value


def test_a_ring_must_fit_in_the_shares():
    from models.sign_gate import Ring

    with pytest.raises(ValueError, match="ring"):
        Ring(bits=60, dropped=8)
    with pytest.raises(ValueError, match="ring"):
        Ring(bits=1)


def _relu_party(rank, values):
    from models.crypten_compat import load_crypten
    from models.sign_gate import RELU, deal_ahead, relu, taken

    crypten = load_crypten()
    comm = crypten.communicator.get()
    x = crypten.cryptensor(torch.tensor(values) if rank == 0 else torch.empty(len(values)), src=0)
    first = relu(x).get_plain_text().tolist()  # keys dealt as it goes
    deal_ahead(comm, {RELU: len(values)})  # the offline phase
    crypten.cfg.communicator.verbose = True
    comm.reset_communication_stats()
    second = relu(x)
    rounds = comm.get_communication_stats()["rounds"]
    comm.reset_communication_stats()
    x * x  # a multiplication alone (under TTP it also asks the dealer for its triple)
    multiplication = comm.get_communication_stats()["rounds"]
    return first, second.get_plain_text().tolist(), rounds - multiplication, taken(comm)[RELU]


@pytest.mark.parametrize("provider", ["TFP", "TTP"])
def test_relu_by_the_gate_is_within_the_dropped_bits_and_takes_two_rounds(provider):
    values = [3.5, -2.0, 0.0, 1e-3, -1e-3, 0.01, -0.01, 30000.0, -30000.0, 0.25, -0.25]
    results = run_parties(_relu_party, values, provider=provider)[:2]
    for first, second, gate_rounds, compared in results:
        for result in (first, second):
            errors = [abs(r - max(v, 0.0)) for r, v in zip(result, values, strict=True)]
            assert max(errors) < 2**-8 + 2e-4, errors  # the dropped bits, CrypTen's rounding
        assert gate_rounds == 1  # its opening, then a multiplication: the keys were dealt ahead
        assert compared == 2 * len(values)
