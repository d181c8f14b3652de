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
2^6, 0.15 % with 2^10 (the default) and 0.39 % with 2^14 (large values lose more to the
truncation of products).

What this step does not do yet: clip per-image gradients and add noise party 1 cannot
remove. An opened batch gradient is a function of the images and small-batch gradients can
be inverted, so the step must not open real patients' gradients to party 1 before that
exists; it is here, measured and tested, as the part the rest builds on.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import ModuleType

import torch

from models.encrypted import Params, TensorLike, _is_plain, forward, share_images
from models.encrypted import share_parameters as _share_parameters
from models.nets import Architecture

MODEL_OWNER = 1
#: the loss gradient's multiplier on shares (see the module's docstring)
GRADIENT_SCALE = 2.0**10


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
    return OrderedDict((name, param.grad) for name, param in params.items())


@contextlib.contextmanager
def _no_grad(like: TensorLike) -> Iterator[None]:
    if _is_plain(like):
        with torch.no_grad():
            yield
        return
    from models.crypten_compat import load_crypten

    with load_crypten().no_grad():
        yield


def plaintext_step(
    arch: Architecture,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
) -> Params:
    """The same SGD step in plaintext (for checks and the benchmark's comparison)."""
    tracked = OrderedDict((k, v.detach().clone().requires_grad_(True)) for k, v in params.items())
    gradients = scaled_gradients(arch, tracked, images, labels, 1.0)
    return OrderedDict((k, (params[k] - lr * gradients[k]).detach()) for k in params)


def encrypted_step(
    crypten: ModuleType,
    rank: int,
    arch: Architecture,
    params: Params | None,
    images: torch.Tensor | None,
    labels: torch.Tensor,
    lr: float,
    scale: float = GRADIENT_SCALE,
) -> Params | None:
    """One SGD step under MPC. Party 1 passes its folded parameters and gets the updated
    ones; party 0 passes the preprocessed images ``(B, 1, S, S)`` and gets None. Both pass
    the same public labels ``(B,)``. One opening, to party 1: the summed gradient."""
    if (rank == MODEL_OWNER) != (params is not None) or (rank == 0) != (images is not None):
        raise ValueError("party 1 passes the parameters, party 0 the images")
    encrypted = _share_parameters(crypten, arch, params, rank)
    for param in encrypted.values():
        param.requires_grad = True
    size = arch.image_size
    shared_images = share_images(crypten, images, (len(labels), 1, size, size), rank)
    gradients = scaled_gradients(arch, encrypted, shared_images, labels, scale)
    opened = open_to_owner(gradients)
    if params is None or opened is None:
        return None
    return OrderedDict((k, params[k] - (lr / scale) * opened[k]) for k in params)


def open_to_owner(gradients: Mapping[str, TensorLike]) -> OrderedDict[str, torch.Tensor] | None:
    """Open every gradient to party 1 in one opening (flattened and joined: local); party 0
    gets None."""
    joined: TensorLike = torch.cat([g.flatten() for g in gradients.values()])
    plain = joined.get_plain_text(dst=MODEL_OWNER)
    if plain is None:
        return None
    opened: OrderedDict[str, torch.Tensor] = OrderedDict()
    offset = 0
    for name, gradient in gradients.items():
        count = gradient.numel() if _is_plain(gradient) else int(gradient.nelement())
        opened[name] = plain[offset : offset + count].view(gradient.shape)
        offset += count
    return opened
