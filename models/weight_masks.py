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

With a kept mask, a product's triple (``a`` and ``c = a op b``) does not depend on the input:
:func:`deal_ahead` deals a recorded forward's triples before the next input exists (the
offline phase, ``EncryptedClassifier.prepare``). Its products run through ``models.ring``
(exact integer products on float64 kernels), with the kept operands cut into limbs once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from models import ring

#: products whose triples this module deals (CrypTen's op names)
OPS = ("matmul", "conv2d")


@dataclass
class _Mask:
    b: Any  # ArithmeticSharedTensor, precision 0: the shares of b
    delta: torch.Tensor  # the opened W - b (both parties)
    b_plain: torch.Tensor | None  # party 0, the dealer
    version: int  # the weight's version counter when W - b was opened
    #: the constant operands of every later product, cut into limbs once (models.ring):
    #: W - b, this party's share of b (party 0: plus W - b), and b itself (party 0)
    delta_limbs: ring.Limbs | None = None
    b_share_limbs: ring.Limbs | None = None
    b_plain_limbs: ring.Limbs | None = None


@dataclass
class ConstantOperands:
    """The marked tensors' share storages (kept alive: an address names one tensor) and the
    masks dealt for them, per operation and view."""

    storages: dict[int, torch.Tensor] = field(default_factory=dict)
    masks: dict[tuple[Any, ...], _Mask] = field(default_factory=dict)
    #: ``(a, c)`` dealt ahead for products with a kept mask (:func:`deal_ahead`), per
    #: mask key and input size, in the order the forward takes them
    ready: dict[tuple[Any, ...], list[tuple[Any, Any]]] = field(default_factory=dict)
    #: while recording (:func:`recording`): each kept-mask product taken, in order
    taken: list[Product] | None = None


@dataclass(frozen=True)
class Product:
    """One product with a kept mask, as a forward took it (what :func:`deal_ahead` deals)."""

    op: str
    key: tuple[Any, ...]
    x_size: torch.Size
    kwargs: tuple[tuple[str, Any], ...]


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
    #: the kept mask whose operands are already cut into limbs (None: a fresh mask)
    limbs: _Mask | None = None

    def masked(self, x: Any, y: Any) -> list[Any]:
        """The shares to open: ``x - a``, and ``y - b`` unless its mask is kept."""
        from crypten.mpc.primitives.beaver import IgnoreEncodings

        with IgnoreEncodings([self.a, self.b, x, y]):
            return [x - self.a] if self.delta is not None else [x - self.a, y - self.b]

    def product(self, opened: Iterator[torch.Tensor]) -> Any:
        """``x op y`` at the operands' squared scale, from the opened values of
        :meth:`masked` (taken from ``opened`` in that order)."""
        epsilon = next(opened)
        if self.delta is None:
            self.delta = next(opened)
            if self._keep is not None:
                self._keep(self.delta)
        # c + (x - a) op b + a op (y - b) + (x - a) op (y - b): the public last term is
        # party 0's alone, so party 0 folds it into its first product (two ring products)
        c = self.c
        c.share += ring.product(self.op, epsilon, self.b_share_operand(), **self.kwargs)
        c.share += ring.product(self.op, self.a.share, self.delta_operand(), **self.kwargs)
        return c

    def b_share_operand(self) -> torch.Tensor | ring.Limbs:
        """This party's share of ``b``, plus ``y - b`` on party 0."""
        import crypten.communicator as comm

        if self.limbs is not None and self.limbs.b_share_limbs is not None:
            return self.limbs.b_share_limbs
        assert self.delta is not None
        return self.b.share + self.delta if comm.get().get_rank() == 0 else self.b.share

    def delta_operand(self) -> torch.Tensor | ring.Limbs:
        if self.limbs is not None and self.limbs.delta_limbs is not None:
            return self.limbs.delta_limbs
        assert self.delta is not None
        return self.delta


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
        for stale in [k for k in operands.ready if k[0] == key]:
            del operands.ready[stale]
        mask = None
    if operands.taken is not None:  # this product's mask is kept after it, if not before
        operands.taken.append(Product(op, key, x.size(), tuple(sorted(kwargs.items()))))
    if mask is None:
        b_plain = generate_random_ring_element(y.size()) if dealer else None
        b = ArithmeticSharedTensor(b_plain, size=y.size(), precision=0, src=0)
        a, c = _deal(op, x.size(), y.size(), b_plain, kwargs)

        def keep(delta: torch.Tensor) -> None:
            kept = _Mask(b, delta, b_plain, version)
            kept.delta_limbs = ring.Limbs(delta)
            kept.b_share_limbs = ring.Limbs(b.share + delta if dealer else b.share)
            kept.b_plain_limbs = None if b_plain is None else ring.Limbs(b_plain)
            operands.masks[key] = kept

        return Triple(op, kwargs, a, b, c, None, keep)
    waiting = operands.ready.get((key, x.size()))
    if waiting:
        a, c = waiting.pop(0)
    else:
        a, c = _deal(op, x.size(), y.size(), mask.b_plain_limbs or mask.b_plain, kwargs)
    return Triple(op, kwargs, a, mask.b, c, mask.delta, limbs=mask)


def _deal(
    op: str,
    x_size: torch.Size,
    y_size: torch.Size,
    b_plain: torch.Tensor | ring.Limbs | None,
    kwargs: dict[str, Any],
) -> tuple[Any, Any]:
    """A fresh ``a`` and ``c = a op b`` (party 0 deals, so only it passes ``b_plain``)."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    a_plain = c_plain = None
    if b_plain is not None:
        a_plain = generate_random_ring_element(x_size)
        c_plain = ring.product(op, a_plain, b_plain, **kwargs)
    a = ArithmeticSharedTensor(a_plain, size=x_size, precision=0, src=0)
    c_size = _product_size(op, x_size, y_size, kwargs)
    return a, ArithmeticSharedTensor(c_plain, size=c_size, precision=0, src=0)


@contextlib.contextmanager
def recording(comm: Any) -> Iterator[list[Product]]:
    """The kept-mask products the block takes, in order (empty without kept masks)."""
    operands = getattr(comm, "constant_operands", None)
    taken: list[Product] = []
    if operands is None:
        yield taken
        return
    operands.taken = taken
    try:
        yield taken
    finally:
        operands.taken = None


def deal_ahead(comm: Any, products: Iterable[Product]) -> None:
    """The offline phase: deal now the triples of ``products`` (a recorded forward's), so
    that the next forward's products with kept masks cost only their opening and two
    local products. Both parties call it with the same products, in the same order."""
    operands = getattr(comm, "constant_operands", None)
    if operands is None:
        return
    for product in products:
        mask = operands.masks.get(product.key)
        if mask is None:
            continue
        weight_size = mask.b.share.size()
        b_plain = mask.b_plain_limbs or mask.b_plain
        dealt = _deal(product.op, product.x_size, weight_size, b_plain, dict(product.kwargs))
        operands.ready.setdefault((product.key, product.x_size), []).append(dealt)


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
