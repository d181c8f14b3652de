"""Exact 64-bit ring products through float64 limbs equal PyTorch's integer kernels."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import ring

EXTREMES = torch.tensor([-(2**63), 2**63 - 1, -1, 0, 1, 2**16 - 1, 2**48])


def _ring_elements(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(-(2**63), 2**63 - 1, shape, generator=generator)
    flat = values.view(-1)
    flat[: len(EXTREMES)] = EXTREMES[: flat.numel()]
    return values


@settings(max_examples=20, deadline=None)
@given(
    channels=st.integers(1, 5),
    out_channels=st.integers(1, 4),
    side=st.integers(3, 9),
    kernel=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_a_ring_convolution_equals_the_integer_kernel(
    channels, out_channels, side, kernel, stride, padding, seed
):
    x = _ring_elements((2, channels, side, side), seed)
    w = _ring_elements((out_channels, channels, kernel, kernel), seed + 1)
    expected = torch.conv2d(x, w, stride=stride, padding=padding)
    assert torch.equal(ring.product("conv2d", x, w, stride=stride, padding=padding), expected)
    limbs = ring.Limbs(w)  # a constant operand cut once
    assert torch.equal(ring.product("conv2d", x, limbs, stride=stride, padding=padding), expected)


@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(1, 6),
    inner=st.integers(1, 300),
    cols=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_a_ring_matrix_product_equals_the_integer_kernel(rows, inner, cols, seed):
    x = _ring_elements((rows, inner), seed)
    y = _ring_elements((inner, cols), seed + 1)
    assert torch.equal(ring.product("matmul", x, y), torch.matmul(x, y))
    assert torch.equal(ring.product("matmul", x, ring.Limbs(y)), torch.matmul(x, y))


def test_what_float64_cannot_hold_exactly_takes_the_integer_kernel():
    x = _ring_elements((1, 4, 5, 5), 1)
    w = _ring_elements((4, 2, 3, 3), 2)  # groups: not cut into limbs
    grouped = torch.conv2d(x, w, groups=2)
    assert torch.equal(ring.product("conv2d", x, w, groups=2), grouped)
    long_sum = torch.zeros(1, ring.MAX_TERMS, dtype=torch.long)  # 2^21 terms: not exact
    assert not ring._exact_in_float("matmul", long_sum, long_sum.t(), {})
    floats = torch.randn(3, 4)
    assert torch.equal(ring.product("matmul", floats, floats.t()), floats @ floats.t())
