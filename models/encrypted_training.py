"""Encrypted fine-tuning, the step: SGD on secret-shared images and secret-shared weights.

Party 0 (the clinic) secret-shares the images of settled cases and party 1 (the model owner)
its current folded weights; the doctors' consensus labels are public to both. Both parties
run the classifier's own program (:func:`models.encrypted.forward`, the one that serves
predictions) on CrypTen tensors that record gradients, and CrypTen's autograd carries the
logistic loss of the scaled logit difference back through it, on shares. One value is
opened per step, to party 1 only: the batch's summed gradient, which party 1 applies to its
plaintext weights in float. Party 0 learns nothing; party 1 never receives an image or any
per-image value.

Fixed point. CrypTen keeps 16 fractional bits (resolution 2^-16, 1.5e-5). The early layers'
gradients are of that size (3e-4 at most for a fresh LeNet at batch 8) and a step
``lr * gradient`` (about 1e-6) would round to zero if it were applied on shares. So the loss
gradient enters the backward pass multiplied by :data:`GRADIENT_SCALE`, the gradient is
opened at that scale, and party 1 divides and steps in float: nothing small is ever held in
fixed point. Measured on the fresh LeNet and batch of 8 of
``tests/models/test_encrypted_training.py``, the largest error of one step against the plaintext step, relative to
the step: 10 % in conv1 and conv2 and 3 % in fc1 without the scale; at most 0.22 % with
2^6 (the default), 0.15 % with 2^10 and 0.39 % with 2^14. Larger is not better: CrypTen's
two-party truncation turns a value to garbage with a probability that grows with its size
(and large values lose more to the truncation of products), so the default is the smallest
scale that keeps the error near its floor.

Differential privacy (``DPStep``). An opened batch gradient is a function of the images,
and small-batch gradients can be inverted, so a step whose gradient reaches party 1 clips
every image's gradient and adds Gaussian noise party 1 cannot remove, all on shares:
* per image, its own forward and backward pass (per-image gradients), ``r = |g| / C``;
* the clip factor ``min(1, 1/r)``: CrypTen's inverse square root of ``r^2`` (Newton's
  method, good for ``r^2`` below about 100 and wrong far above, measured), so one
  comparison of ``r^2`` with 1 and 100 picks: factor 1 below 1, ``1/r`` between, and 0 above
  100 (an image whose gradient is over 10 C is left out of the step: still a function of
  that image alone, so the sum's sensitivity stays C; party 1 does not learn which). ``r^2``
  is taken at two fixed-point scales (:func:`clipped_sum`), so a large gradient cannot
  overflow into a small-looking norm: the check holds while every coordinate of an image's
  gradient is below 46,000 C;
* noise ``N(0, (sigma C)^2)`` per coordinate, drawn by party 0 and secret-shared by it:
  party 1 never knows it, so it cannot subtract it (party 0 never sees the gradient);
* the clipped sum plus noise is the one value opened, to party 1, which divides by the
  batch size and steps.
Head only (:func:`encrypted_head_step`, ResNet18's fine-tuning). The features of every
case are computed once under MPC (:func:`features_once`) and stay shared; each step trains
the last layer on them, with per-image gradients in closed form (a linear layer's gradient
is the loss's derivative times the features), the same clipping and noise, and the step's
choice of cases and their labels secret-shared by party 0.

The noise comes from torch's generator seeded from the operating system's entropy (like
Opacus without ``secure_mode``), not a cryptographically secure generator.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from models.encrypted import (
    Params,
    TensorLike,
    _is_plain,
    forward,
    head,
    parameter_shapes,
    penultimate,
    share_images,
)
from models.encrypted import share_parameters as _share_parameters
from models.nets import Architecture

MODEL_OWNER = 1
log = logging.getLogger(__name__)
#: the loss gradient's multiplier on shares (see the module's docstring)
GRADIENT_SCALE = 2.0**6
#: an image whose gradient norm is over this many C is left out of a DP step
DROP_ABOVE_CLIPS = 10.0
#: per-image gradients are multiplied by this / (C x scale) before squaring: coordinates
#: near 1 (no precision lost to 16 fractional bits) and squares far below the overflow
_NORM_HEADROOM = 2.0**8
#: the coarsest norm's divisor (see :func:`clipped_sum`)
_COARSEST = 2.0**12
#: party 1 zeroes an opened coordinate beyond (B + this x sigma) x C: no clipped sum plus
#: noise reaches it (probability below 1e-15 per coordinate), a truncation error does
_IMPOSSIBLE_SIGMAS = 8.0


@dataclass(frozen=True)
class DPStep:
    """DP-SGD's two knobs for one step: the per-image gradient norm bound ``clip`` (C) and
    the ``noise_multiplier`` (sigma; the noise on the summed gradient has std sigma C)."""

    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"the clipping norm must be > 0, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"the noise multiplier must be >= 0, got {self.noise_multiplier}")


def logistic_gradient(difference: TensorLike, labels: torch.Tensor, scale: float) -> TensorLike:
    """``scale`` x d(mean logistic loss)/d(difference) = ``(sigmoid(d) - y) * scale / B``.

    ``difference`` is the program's scaled logit difference ``(B, 1)`` and ``labels`` the
    public 0/1 labels ``(B, 1)``; on shares the sigmoid is CrypTen's approximation."""
    return (difference.sigmoid() - labels) * (scale / labels.shape[0])


def scaled_gradients(
    arch: Architecture,
    params: Mapping[str, TensorLike],
    images: TensorLike,
    labels: torch.Tensor,
    scale: float = GRADIENT_SCALE,
) -> OrderedDict[str, TensorLike]:
    """``scale`` x the gradient of the batch's mean logistic loss for every parameter.

    ``params`` record gradients (``requires_grad``); torch or CrypTen tensors alike, like
    :func:`models.encrypted.forward`. ``labels``: public, ``(B,)`` or ``(B, 1)``."""
    difference = forward(arch, params, images)
    with _no_grad(difference):
        upstream = logistic_gradient(difference, labels.reshape(-1, 1).float(), scale)
    difference.backward(upstream)
    return OrderedDict((name, p.grad) for name, p in params.items() if p.requires_grad)


@contextlib.contextmanager
def _no_grad(like: TensorLike) -> Iterator[None]:
    if _is_plain(like):
        with torch.no_grad():
            yield
        return
    from models.crypten_compat import load_crypten

    with load_crypten().no_grad():
        yield


def per_image_scaled_gradients(
    arch: Architecture,
    params: Mapping[str, TensorLike],
    images: TensorLike,
    labels: torch.Tensor,
    scale: float = GRADIENT_SCALE,
) -> TensorLike:
    """``(B, P)``: each image's own ``scale`` x gradient, all parameters joined (one forward
    and backward pass per image)."""
    rows = []
    for i in range(labels.shape[0]):
        for param in params.values():
            param.grad = None
        gradients = scaled_gradients(arch, params, images[i : i + 1], labels[i : i + 1], scale)
        rows.append(torch.cat([g.flatten() for g in gradients.values()]).unsqueeze(0))
    return torch.cat(rows, 0)


def clipped_sum(per_image: TensorLike, clip: float, scale: float = GRADIENT_SCALE) -> TensorLike:
    """``(P,)``: the sum of the per-image gradients (at ``scale``), each clipped to norm
    ``clip`` (x ``scale``); an image over ``DROP_ABOVE_CLIPS`` x ``clip`` adds nothing.

    The squared norm is taken at three scales, in one multiplication: finely (coordinates x
    ``_NORM_HEADROOM / C``: exact near C, but a coordinate over 180 C overflows 64 bits when
    squared), coarsely (coordinates / C: good to 1 % near 10 C, overflows above 46,000 C) and
    coarsest (/ 4096 C: overflows only above 1.9e8 C, more than any value the 64-bit ring
    holds at this scale, so also a coordinate that a truncation error turned to garbage).
    Each scale is read only where the coarser one says it cannot have overflowed: coarsest
    over 40,960 C or coarse over 10 C leaves the image out."""
    count = per_image.shape[1]
    unit = 1.0 / (clip * scale)
    scaled = [per_image * (unit * s) for s in (_NORM_HEADROOM, 1.0, 1.0 / _COARSEST)]
    squares = torch.cat(scaled, 1).square()  # one multiplication for the three
    ratio2 = squares[:, :count].sum(1) / _NORM_HEADROOM**2  # (|g| / C)^2, (B,)
    coarse2 = squares[:, count : 2 * count].sum(1)
    coarsest2 = squares[:, 2 * count :].sum(1)
    limit = DROP_ABOVE_CLIPS**2
    tests = [1 - ratio2, coarse2 - limit, coarsest2 - limit]  # > 0: small, big, huge
    if _is_plain(per_image):
        small, big, huge = ((t > 0).to(ratio2.dtype) for t in tests)
    else:
        from models.crypten_compat import encoded_like

        bits = encoded_like(torch.stack(tests) > 0, ratio2)  # one comparison for all three
        small, big, huge = bits[0], bits[1], bits[2]
    # "big" is read only where "huge" is not (where the coarse norm cannot have overflowed)
    dropped = huge + (1 - huge) * big
    if _is_plain(per_image):
        inverse = ratio2.clamp(min=1e-12).rsqrt()
    else:
        in_range: Any = ratio2 + (1 - ratio2) * dropped  # 1 where out of the Newton range
        inverse = in_range.inv_sqrt()
    factor = (1 - dropped) * (small + (1 - small) * inverse)
    return (per_image * factor.unsqueeze(1)).sum(0)


def plaintext_step(
    arch: Architecture,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    clip: float | None = None,
    trainable: Collection[str] | None = None,
) -> Params:
    """The same SGD step in plaintext (for checks and the benchmark's comparison); with
    ``clip``, DP's clipped step without its noise."""
    tracked = OrderedDict(
        (k, v.detach().clone().requires_grad_(trainable is None or k in trainable))
        for k, v in params.items()
    )
    if clip is None:
        gradients = scaled_gradients(arch, tracked, images, labels, 1.0)
    else:
        summed = clipped_sum(
            per_image_scaled_gradients(arch, tracked, images, labels, 1.0), clip, 1.0
        )
        trained = OrderedDict((k, v) for k, v in tracked.items() if v.requires_grad)
        gradients = _split(summed / len(labels), trained) or OrderedDict()
    return _stepped(params, gradients, lr)


def _stepped(params: Params, gradients: Mapping[str, torch.Tensor], step: float) -> Params:
    """``params`` with ``step`` x gradient taken from those that have one."""
    return OrderedDict(
        (k, (v - step * gradients[k]).detach() if k in gradients else v) for k, v in params.items()
    )


def encrypted_step(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    images: torch.Tensor | None,
    labels: torch.Tensor,
    lr: float,
    scale: float = GRADIENT_SCALE,
    dp: DPStep | None = None,
    mean_over: float | None = None,
    trainable: Collection[str] | None = None,
) -> Params | None:
    """One SGD step under MPC. Party 1 passes its folded parameters and gets the updated
    ones; party 0 passes the preprocessed images ``(B, 1, S, S)`` and gets None. Both pass
    the same public labels ``(B,)`` and ``dp``. One opening, to party 1: the summed
    gradient (with ``dp``: per-image clipped, plus party 0's noise). With ``dp`` the noisy
    sum is divided by ``mean_over`` (default B; DP-SGD with Poisson sampling divides by the
    expected batch size). ``trainable``: the parameters that learn (default all); only their
    gradient is computed, noised and opened."""
    if (rank == MODEL_OWNER) != (params is not None) or (rank == 0) != (images is not None):
        raise ValueError("party 1 passes the parameters, party 0 the images")
    encrypted = _share_parameters(crypten, arch, params, rank)
    for name, param in encrypted.items():
        param.requires_grad = trainable is None or name in trainable
    size = arch.image_size
    shared_images = share_images(crypten, images, (len(labels), 1, size, size), rank)
    if dp is None:
        gradients = scaled_gradients(arch, encrypted, shared_images, labels, scale)
        opened = open_to_owner(gradients)
        step = lr / scale
    else:
        per_image = per_image_scaled_gradients(arch, encrypted, shared_images, labels, scale)
        plain = _noisy_sum_to_owner(crypten, rank, per_image, dp, scale)
        trained = OrderedDict((k, v) for k, v in encrypted.items() if v.requires_grad)
        opened = _split(plain, trained)
        step = lr / (scale * (len(labels) if mean_over is None else mean_over))
    if params is None or opened is None:
        return None
    return _stepped(params, opened, step)


def _noisy_sum_to_owner(
    crypten: ModuleType, rank: int, per_image: TensorLike, dp: DPStep, scale: float
) -> torch.Tensor | None:
    """DP's one opening: the clipped sum of the ``(B, P)`` per-image gradients (at ``scale``)
    plus party 0's noise, opened to party 1 (None for party 0), whose coordinates beyond any
    clipped sum plus noise (truncation errors) party 1 zeroes."""
    with crypten.no_grad():
        summed = clipped_sum(per_image, dp.clip, scale) + _party0_noise(
            crypten, rank, int(per_image.shape[1]), dp.noise_multiplier * dp.clip * scale
        )
    plain = summed.get_plain_text(dst=MODEL_OWNER)
    if plain is not None:  # party 1, post-processing the DP output (still DP)
        rows = int(per_image.shape[0])
        bound = (rows + _IMPOSSIBLE_SIGMAS * dp.noise_multiplier) * dp.clip * scale
        impossible = plain.abs() > bound
        if impossible.any():
            log.warning(
                "zeroed %d opened gradient coordinate(s) beyond any clipped sum plus "
                "noise (fixed-point truncation errors)",
                int(impossible.sum()),
            )
            plain = torch.where(impossible, torch.zeros_like(plain), plain)
    return plain


# ------------------------------------------------------------- the last layer on features

#: the folded parameters of each backbone's last layer (what head-only fine-tuning changes)
HEAD_LAYER = {"lenet": "fc3", "resnet18": "fc", "resnet18-mpc": "fc"}


def head_names(arch: Architecture) -> tuple[str, str]:
    layer = HEAD_LAYER[arch.backbone]
    return f"{layer}.w", f"{layer}.b"


def _share_head(
    crypten: ModuleType, arch: Architecture, params: Params | None
) -> OrderedDict[str, TensorLike]:
    """Party 1's last layer alone, secret-shared (party 0 passes None and learns shapes)."""
    shapes = parameter_shapes(arch)
    return OrderedDict(
        (name, crypten.cryptensor(torch.empty(shapes[name]) if params is None else params[name],
                                  src=MODEL_OWNER))
        for name in head_names(arch)
    )  # fmt: skip


def head_per_image_scaled_gradients(
    arch: Architecture,
    params: Mapping[str, TensorLike],
    features: TensorLike,
    chosen: TensorLike,
    targets: TensorLike,
    scale: float = GRADIENT_SCALE,
) -> TensorLike:
    """``(N, D + 1)``: each case's own ``scale`` x gradient of its logistic loss on the last
    layer alone, in closed form, ``u_i [f_i, 1]`` with ``u_i = chosen_i sigmoid(d_i) - y_i``
    (``d_i`` the scaled logit difference of features ``f_i``). ``chosen`` ``(N, 1)`` is 1 for
    this step's cases and 0 for the others, ``targets`` ``(N, 1)`` is ``chosen x label``: on
    shares both are party 0's, so which cases a step takes stays hidden. Three
    multiplications, whatever N: the layer's product, the choice and ``u x f``; no per-image
    backward pass."""
    difference = head(arch, params, features)
    upstream = (difference.sigmoid() * chosen - targets) * scale
    return torch.cat([upstream * features, upstream], 1)


def features_once(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    images: torch.Tensor | None,
    count: int,
    batch: int = 8,
) -> TensorLike:
    """The penultimate features ``(count, D)`` of party 0's images under party 1's weights,
    computed once and kept secret-shared (never opened). Party 1 passes ``params``, party 0
    ``images``."""
    rows = _in_batches(
        crypten, rank, arch, params, images, count, batch,
        lambda encrypted, shared: penultimate(arch, encrypted, shared),
    )  # fmt: skip
    return crypten.cat(rows, 0)


def _in_batches(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    images: torch.Tensor | None,
    count: int,
    batch: int,
    program: Callable[[Mapping[str, TensorLike], TensorLike], Any],
) -> list[Any]:
    """``program(weights, images)`` on party 1's shared weights and party 0's images, shared
    ``batch`` at a time, without gradients; one result per batch. Party 1 passes ``params``,
    party 0 ``images``."""
    if (rank == MODEL_OWNER) != (params is not None) or (rank == 0) != (images is not None):
        raise ValueError("party 1 passes the parameters, party 0 the images")
    encrypted = _share_parameters(crypten, arch, params, rank)
    size = arch.image_size
    results = []
    with crypten.no_grad():
        for start in range(0, count, batch):
            chunk = None if images is None else images[start : start + batch]
            shared = share_images(crypten, chunk, (min(batch, count - start), 1, size, size), rank)
            results.append(program(encrypted, shared))
    return results


def encrypted_head_step(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    features: TensorLike,
    chosen: torch.Tensor | None,
    labels: torch.Tensor | None,
    lr: float,
    dp: DPStep,
    mean_over: float,
    scale: float = GRADIENT_SCALE,
) -> Params | None:
    """One DP-SGD step on the last layer alone, on ``features`` shared by
    :func:`features_once`: for ResNet18, whose convolutions cost seconds per image under
    MPC, the features are computed once and every step costs a few rounds. Party 1 passes
    its folded parameters (only the last layer's are shared, and only they change); party 0
    passes ``chosen`` (0/1 per case: this step's Poisson draw) and the cases' ``labels``, and
    secret-shares both, so party 1 learns neither which cases nor how many a step took. The
    one opening is DP's (:func:`_noisy_sum_to_owner`), divided by ``mean_over`` (the expected
    batch size).

    A case not chosen adds a product of a shared 0 with its features: CrypTen's truncation
    leaves a last-bit error there (2^-16 of its gradient, under noise of std sigma C)."""
    if (rank == MODEL_OWNER) != (params is not None) or (rank == 0) != (chosen is not None):
        raise ValueError("party 1 passes the parameters, party 0 the choice and labels")
    rows = int(features.shape[0])
    shared = _share_head(crypten, arch, params)
    mask = torch.empty(rows, 1) if chosen is None else chosen.float().view(-1, 1)
    target = torch.empty(rows, 1) if labels is None else mask * labels.float().view(-1, 1)
    per_image = head_per_image_scaled_gradients(
        arch, shared, features, crypten.cryptensor(mask, src=0),
        crypten.cryptensor(target, src=0), scale,
    )  # fmt: skip
    plain = _noisy_sum_to_owner(crypten, rank, per_image, dp, scale)
    opened = _split(plain, shared)
    if params is None or opened is None:
        return None
    return _stepped(params, opened, lr / (scale * mean_over))


def plaintext_head_step(
    arch: Architecture,
    params: Params,
    features: torch.Tensor,
    chosen: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    clip: float,
    mean_over: float,
) -> Params:
    """:func:`encrypted_head_step` in plaintext, without the noise (for checks and the
    benchmark's comparison)."""
    mask = chosen.float().view(-1, 1)
    per_image = head_per_image_scaled_gradients(
        arch, params, features, mask, mask * labels.float().view(-1, 1), 1.0
    )
    summed = clipped_sum(per_image, clip, 1.0)
    head_params = OrderedDict((name, params[name]) for name in head_names(arch))
    return _stepped(params, _split(summed, head_params) or OrderedDict(), lr / mean_over)


def head_differences_to_party0(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    features: TensorLike,
) -> torch.Tensor | None:
    """Like :func:`differences_to_party0`, from features shared by :func:`features_once`:
    the last layer alone runs (party 1 shares only its parameters), opened to party 0."""
    with crypten.no_grad():
        opened = (
            head(arch, _share_head(crypten, arch, params), features).flatten().get_plain_text(dst=0)
        )
    return None if rank != 0 else opened


def differences_to_party0(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    images: torch.Tensor | None,
    count: int,
    batch: int = 32,
) -> torch.Tensor | None:
    """The serving program's scaled logit differences ``(count,)`` of party 0's images under
    party 1's parameters, opened to party 0 only (its own images: what serving tells it
    too); party 1 gets None. Party 1 passes ``params``, party 0 ``images``."""
    opened = _in_batches(
        crypten, rank, arch, params, images, count, batch,
        lambda encrypted, shared: forward(arch, encrypted, shared).flatten().get_plain_text(dst=0),
    )  # fmt: skip
    return None if rank != 0 else torch.cat(opened)


def _party0_noise(crypten: ModuleType, rank: int, count: int, std: float) -> TensorLike:
    """``N(0, std^2)`` per coordinate, drawn by party 0 and secret-shared by it (party 1
    passes an empty tensor of the public shape and learns nothing of it)."""
    noise = torch.empty(count)
    if rank == 0:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
        noise = torch.normal(0.0, std, (count,), generator=generator) if std > 0 else noise.zero_()
    return crypten.cryptensor(noise, src=0)


def open_to_owner(gradients: Mapping[str, TensorLike]) -> OrderedDict[str, torch.Tensor] | None:
    """Open every gradient to party 1 in one opening (flattened and joined: local); party 0
    gets None."""
    joined: TensorLike = torch.cat([g.flatten() for g in gradients.values()])
    return _split(joined.get_plain_text(dst=MODEL_OWNER), gradients)


def _split(
    plain: torch.Tensor | None, like: Mapping[str, TensorLike]
) -> OrderedDict[str, torch.Tensor] | None:
    """A joined flat vector back into tensors shaped like ``like``'s (None stays None)."""
    if plain is None:
        return None
    opened: OrderedDict[str, torch.Tensor] = OrderedDict()
    offset = 0
    for name, tensor in like.items():
        count = tensor.numel() if _is_plain(tensor) else int(tensor.nelement())
        opened[name] = plain[offset : offset + count].view(tensor.shape)
        offset += count
    return opened
