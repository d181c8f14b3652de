"""Beaver triples whose weight mask is opened once per session (TFP).

A product of a secret input ``x`` and party 1's secret weights ``W`` (a linear layer, a
convolution, the detector's whitening) uses a triple ``(a, b, c = a op b)``: the parties
open ``x - a`` and ``W - b``. CrypTen draws a fresh triple each time, so every forward
reopens ``W - b`` for every layer: most of a forward's bytes (LeNet's fc1 alone is 48,000
numbers) and the random draws that go with them. The weights do not change while a model is
served, so ``b`` need not either: the first product opens ``W - b`` as usual and both parties
keep it; later products draw a fresh ``a`` (and ``c = a op b``) and open only ``x - a``.
Security is the triple's: ``W - b`` is one opening of ``W`` under a uniform mask used for
nothing else, and ``x - a`` is fresh each time.

Only under ``TFP``, where party 0 deals every triple and so can keep ``b`` itself; under
``TTP`` the dealer keeps no state between requests, and products take CrypTen's way.

:func:`mark_constant` names the session's constant operands (the served model's shared
weights and detector). Only products whose second operand is one of them, or a view of one
(``W.t()``), take this path; a weight changed in place since (its version counter) gets a
new mask; every other product takes CrypTen's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

#: products whose triples this module deals (CrypTen's op names)
OPS = ("matmul", "conv2d")


@dataclass
class _Mask:
    b: Any  # ArithmeticSharedTensor, precision 0: the shares of b
    delta: torch.Tensor  # the opened W - b (both parties)
    b_plain: torch.Tensor | None  # party 0, the dealer
    version: int  # the weight's version counter when W - b was opened


@dataclass
class ConstantOperands:
    """The marked tensors' share storages (kept alive: an address names one tensor) and the
    masks dealt for them, per operation and view."""

    storages: dict[int, torch.Tensor] = field(default_factory=dict)
    masks: dict[tuple[Any, ...], _Mask] = field(default_factory=dict)


def mark_constant(crypten: Any, tensors: Iterable[Any]) -> None:
    """Both parties: ``tensors`` (MPCTensors) stay unchanged while this session serves them.
    Replaces earlier marks (the model served before a switch is no longer constant)."""
    operands = ConstantOperands()
    for tensor in tensors:
        share = tensor._tensor.share
        operands.storages[share.untyped_storage().data_ptr()] = share
    crypten.communicator.get().constant_operands = operands


def _operands(y: Any) -> ConstantOperands | None:
    import crypten
    import crypten.communicator as comm

    operands = getattr(comm.get(), "constant_operands", None)
    if operands is None or crypten.mpc.get_default_provider().NAME != "TFP":
        return None
    if y.share.untyped_storage().data_ptr() not in operands.storages:
        return None
    return operands


def _key(op: str, share: torch.Tensor, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """One kept mask per operation and view of a marked weight (a changed weight replaces
    its mask, so the masks never outnumber the views)."""
    return (op, share.data_ptr(), tuple(share.shape), share.stride(), tuple(sorted(kwargs.items())))


def _product_size(op: str, x_size: torch.Size, y_size: torch.Size, kwargs: Any) -> torch.Size:
    meta = [torch.empty(size, device="meta") for size in (x_size, y_size)]
    return getattr(torch, op)(*meta, **kwargs).size()


@dataclass
class Triple:
    """A Beaver triple for ``x op y``. ``delta`` is ``y - b`` when already opened (a kept
    mask); otherwise it is opened with ``x - a`` and kept (when ``y`` is a marked constant)."""

    op: str
    kwargs: dict[str, Any]
    a: Any
    b: Any
    c: Any
    delta: torch.Tensor | None = None
    _keep: Callable[[torch.Tensor], None] | None = None

    def masked(self, x: Any, y: Any) -> list[Any]:
        """The shares to open: ``x - a``, and ``y - b`` unless its mask is kept."""
        from crypten.mpc.primitives.beaver import IgnoreEncodings

        with IgnoreEncodings([self.a, self.b, x, y]):
            return [x - self.a] if self.delta is not None else [x - self.a, y - self.b]

    def product(self, opened: Iterator[torch.Tensor]) -> Any:
        """``x op y`` at the operands' squared scale, from the opened values of
        :meth:`masked` (taken from ``opened`` in that order)."""
        epsilon = next(opened)
        delta = self.delta
        if delta is None:
            delta = next(opened)
            if self._keep is not None:
                self._keep(delta)
        multiply = getattr(torch, self.op)
        c = self.c
        c.share += multiply(epsilon, self.b.share, **self.kwargs)
        c.share += multiply(self.a.share, delta, **self.kwargs)
        c += multiply(epsilon, delta, **self.kwargs)  # public: added by party 0 only
        return c


def triple(op: str, x: Any, y: Any, **kwargs: Any) -> Triple:
    """The triple for ``x op y`` (ArithmeticSharedTensors): with ``y``'s kept mask when
    ``y`` is a marked constant under TFP, else the provider's."""
    import crypten
    import crypten.communicator as comm
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    operands = _operands(y) if op in OPS else None
    if operands is None:
        provider = crypten.mpc.get_default_provider()
        a, b, c = provider.generate_additive_triple(
            x.size(), y.size(), op, device=x.device, **kwargs
        )
        return Triple(op, kwargs, a, b, c)
    dealer = comm.get().get_rank() == 0  # TFP: party 0 deals
    key = _key(op, y.share, kwargs)
    version = y.share._version
    mask = operands.masks.get(key)
    if mask is not None and mask.version != version:  # changed in place since: deal anew
        mask = None
    if mask is None:
        b_plain = generate_random_ring_element(y.size()) if dealer else None
        b = ArithmeticSharedTensor(b_plain, size=y.size(), precision=0, src=0)
    else:
        b, b_plain = mask.b, mask.b_plain
    a_plain = generate_random_ring_element(x.size()) if dealer else None
    c_plain = getattr(torch, op)(a_plain, b_plain, **kwargs) if dealer else None
    a = ArithmeticSharedTensor(a_plain, size=x.size(), precision=0, src=0)
    c_size = _product_size(op, x.size(), y.size(), kwargs)
    c = ArithmeticSharedTensor(c_plain, size=c_size, precision=0, src=0)
    if mask is not None:
        return Triple(op, kwargs, a, b, c, mask.delta)

    def keep(delta: torch.Tensor) -> None:
        operands.masks[key] = _Mask(b, delta, b_plain, version)

    return Triple(op, kwargs, a, b, c, None, keep)


def _protocol(op: str, x: Any, y: Any, **kwargs: Any) -> Any:
    """CrypTen's Beaver protocol (``crypten.mpc.primitives.beaver``) with kept masks."""
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    t = triple(op, x, y, **kwargs)
    return t.product(iter(ArithmeticSharedTensor.reveal_batch(t.masked(x, y))))


def install() -> None:
    """Route CrypTen's secret-by-secret ``matmul`` and ``conv2d`` through :func:`_protocol`
    (idempotent). Products of unmarked operands run exactly as CrypTen's."""
    from crypten.mpc.primitives import beaver

    if getattr(beaver, "_crypto_doctor_kept_masks", False):
        return
    originals: dict[str, Callable[..., Any]] = {op: getattr(beaver, op) for op in OPS}

    def routed(op: str) -> Callable[..., Any]:
        def product(x: Any, y: Any, **kwargs: Any) -> Any:
            if _operands(y) is None:
                return originals[op](x, y, **kwargs)
            return _protocol(op, x, y, **kwargs)

        product.__name__ = op
        return product

    for op in OPS:
        setattr(beaver, op, routed(op))
    beaver._crypto_doctor_kept_masks = True
