"""The unfamiliarity test as an MPC program, beside the classifier of ``models.encrypted``.

Same pattern as the classifier: party 1 (the model owner) folds its fitted detector
(``models.unfamiliarity.Detector``) into plaintext tensors and secret-shares them; both
parties run :func:`unfamiliar_flags` on the secret-shared activations of the one forward
pass; the same code runs on torch tensors (the plaintext check) and CrypTen tensors.

What it computes, all on secret shares: the feature blocks concatenated (local on shares)
and projected with the whitening ``f @ W / sqrt(D)`` in one multiplication (party 1 folds
the ``1/sqrt(D)`` into ``W``), the squared distance to each class centre (the score),
minus the threshold; one comparison ``> 0`` per class, and the product of the class bits
(unfamiliar = far from every class). Only that product is opened, to party 0: one bit per
image, in the same opening as the logit difference. The distance, the threshold, the
features and the detector's tensors stay secret.

With LeNet's conv feature sets the detector runs inside LeNet's program
(:func:`classify`): each of its multiplications shares a round with one of LeNet's (the
whitening with fc1's, the distances' squares with fc1's activation, the AND of the class
bits with fc2's: ``models.crypten_compat.multiply_together``), so the bit adds only the
comparison's rounds (a test counts them).

Feature sets (``Detector.features``):
* ``conv`` (LeNet): the activations after conv1 and after conv2, each average-pooled to a
  2 x 2 grid per channel (6 x 4 + 16 x 4 = 88 values). Early layers keep the spatial layout
  and stay small even on strange inputs (which matters: squares of large values would
  leave CrypTen's fixed-point range).
* ``conv_laplacian`` (LeNet, the default): ``conv`` plus the input's local high-frequency
  energy, the square of a 3 x 3 Laplacian of the image average-pooled to an 8 x 8 grid
  (64 values). Heavy noise, a strong bias field and another contrast profile change that
  energy where the network's early features barely move (measured with
  ``scripts/bench_ood.py``). The Laplacian is a public kernel, so it is local on shares;
  its square shares conv1's activation multiplication, so it adds no round.
* ``penultimate``: the features the last layer reads.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from models.encrypted import (
    Params,
    TensorLike,
    _activate,
    _activate_and_square,
    _avg_pool,
    _is_plain,
    cat,
    head,
    lenet_convs,
    lenet_fc,
    local,
    multiply_together,
    penultimate,
)
from models.nets import Architecture
from models.sign_gate import positive
from models.unfamiliarity import Detector

FEATURE_SETS = ("conv", "conv_laplacian", "penultimate")
#: the grid the Laplacian energy is pooled to (per side)
LAPLACIAN_GRID = 8
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


@dataclass(frozen=True)
class DetectorCard:
    """The public shape of a detector (what party 1 announces beside the architecture)."""

    method: str
    features: str
    classes: int
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def of(detector: Detector) -> DetectorCard:
        return DetectorCard(detector.method, detector.features, detector.classes, detector.dim)


def feature_blocks(
    arch: Architecture, params: Mapping[str, TensorLike], x: TensorLike, features: str
) -> tuple[list[TensorLike], TensorLike]:
    """``(blocks, penultimate)``: the detector's feature blocks ``(B, D_k)`` and the features
    the classifier head reads, from one forward pass."""
    if features in ("conv", "conv_laplacian"):
        _require_lenet(arch, features)
        edges = laplacian(x) if features == "conv_laplacian" else None
        conv1, conv2, energy = lenet_convs(arch, params, x, square_too=edges)
        return _conv_blocks(x, conv1, conv2, energy), lenet_fc(arch, params, conv2)
    if features == "penultimate":
        last = penultimate(arch, params, x)
        return [last], last
    raise ValueError(f"unknown feature set {features!r}; choose from {FEATURE_SETS}")


def _require_lenet(arch: Architecture, features: str) -> None:
    if arch.backbone != "lenet":
        raise ValueError(f"the {features} feature set exists for lenet only")


def _conv_blocks(
    x: TensorLike, conv1: TensorLike, conv2: TensorLike, energy: TensorLike | None
) -> list[TensorLike]:
    """The ``conv`` blocks (each activation pooled to 2 x 2) and, with ``conv_laplacian``,
    the Laplacian's energy pooled to the ``LAPLACIAN_GRID`` grid."""
    pooled = [_avg_pool(conv1, conv1.shape[-1] // 2), _avg_pool(conv2, conv2.shape[-1] // 2)]
    if energy is not None:
        pooled.append(_avg_pool(energy, x.shape[-1] // LAPLACIAN_GRID))
    return [local(lambda p: p.flatten(1), block) for block in pooled]


def laplacian(x: TensorLike) -> TensorLike:
    """The 3 x 3 Laplacian of the images ``(B, 1, S, S)``. The kernel is public, so on shares
    this is local (measured 0.17 ms per 64 x 64 image, against 0.85 ms as shifted slices and
    adds: CrypTen's cost is per operation). Images are clipped to ±6 by preprocessing, so a
    value is at most 48 and its square (the energy the detector pools to a
    ``LAPLACIAN_GRID`` grid) stays far inside CrypTen's fixed-point range."""
    if _is_plain(x):
        return F.conv2d(x, _LAPLACIAN.to(x.dtype), padding=1)
    return x.conv2d(_LAPLACIAN, padding=1)


def plain_features(
    arch: Architecture, params: Params, x: torch.Tensor, features: str
) -> torch.Tensor:
    """The detector's features in plaintext ``(B, D)`` (for fitting and checking)."""
    blocks, _ = feature_blocks(arch, params, x, features)
    return torch.cat(blocks, 1)


def fold_detector(detector: Detector, block_sizes: list[int]) -> Params:
    """Party 1's plaintext detector tensors, in the order both parties share them."""
    if sum(block_sizes) != detector.dim:
        raise ValueError("feature blocks do not add up to the detector's dimension")
    # the score's 1/D folded in: |(f - mu) W / sqrt(D)|^2 = |(f - mu) W|^2 / D, no division
    whitening = detector.whitening.double() / math.sqrt(detector.dim)
    params: Params = OrderedDict()
    params["ood.w"] = whitening.float().contiguous()
    params["ood.centres"] = (detector.means.double() @ whitening).float()
    params["ood.threshold"] = torch.tensor([detector.threshold], dtype=torch.float32)
    return params


def detector_shapes(card: DetectorCard, block_sizes: list[int]) -> OrderedDict[str, torch.Size]:
    if sum(block_sizes) != card.dim:
        raise ValueError("feature blocks do not add up to the detector's dimension")
    shapes: OrderedDict[str, torch.Size] = OrderedDict()
    shapes["ood.w"] = torch.Size([card.dim, card.dim])
    shapes["ood.centres"] = torch.Size([card.classes, card.dim])
    shapes["ood.threshold"] = torch.Size([1])
    return shapes


def block_sizes(arch: Architecture, features: str) -> list[int]:
    """The sizes of :func:`feature_blocks`, from the public architecture alone."""
    from models.encrypted import fold
    from models.nets import build_model

    params = fold(build_model(arch), arch)
    x = torch.zeros(1, 1, arch.image_size, arch.image_size)
    blocks, _ = feature_blocks(arch, params, x, features)
    return [int(b.shape[1]) for b in blocks]


def unfamiliarity_margins(
    detector: Mapping[str, TensorLike], blocks: list[TensorLike]
) -> TensorLike:
    """``(B, C)`` distance to each class centre minus the threshold (> 0: far from that class)."""
    projected = _joined(blocks).matmul(detector["ood.w"])  # one multiplication for all blocks
    return _margins(detector, _distance_terms(detector, projected).square())


def _joined(blocks: list[TensorLike]) -> TensorLike:
    return cat(blocks, 1) if len(blocks) > 1 else blocks[0]


def _distance_terms(detector: Mapping[str, TensorLike], projected: TensorLike) -> TensorLike:
    """``(B, C, D)``: the whitened features minus each whitened class centre."""
    return local(lambda p, c: p.unsqueeze(1) - c.unsqueeze(0), projected, detector["ood.centres"])


def _margins(detector: Mapping[str, TensorLike], squared_terms: TensorLike) -> TensorLike:
    # 1/D is folded into W
    return local(lambda s, t: s.sum(2) - t, squared_terms, detector["ood.threshold"])


def _bits(margins: TensorLike) -> TensorLike:
    """``(B, C)`` 1 where the margin is > 0. On shares the one-opening sign gate
    (``models.sign_gate``: one round, against about 8 for CrypTen's comparison), its 0/1
    result at the margins' fixed point, so it multiplies and opens beside ordinary values."""
    if _is_plain(margins):
        return (margins > 0).to(margins.dtype)
    return positive(margins)


def unfamiliar_flags(detector: Mapping[str, TensorLike], blocks: list[TensorLike]) -> TensorLike:
    """``(B,)`` 1 = unfamiliar (far from every class centre), 0 = familiar."""
    margins = unfamiliarity_margins(detector, blocks)
    bits = _bits(margins)
    flags = bits[:, 0]
    for c in range(1, margins.shape[1]):
        flags = flags * bits[:, c]
    return flags


def classify(
    arch: Architecture,
    params: Mapping[str, TensorLike],
    detector: Mapping[str, TensorLike],
    features: str,
    x: TensorLike,
) -> tuple[TensorLike, TensorLike]:
    """One pass: ``(scaled logit difference (B, 1), unfamiliar flags (B,))``, the flags at
    the difference's fixed-point encoding (so both open together)."""
    if features == "penultimate":
        blocks, last = feature_blocks(arch, params, x, features)
        return head(arch, params, last), unfamiliar_flags(detector, blocks)
    _require_lenet(arch, features)
    return _lenet_with_detector(arch, params, detector, features, x)


def _lenet_with_detector(
    arch: Architecture,
    params: Mapping[str, TensorLike],
    detector: Mapping[str, TensorLike],
    features: str,
    x: TensorLike,
) -> tuple[TensorLike, TensorLike]:
    """LeNet and the detector as one program: every multiplication of the detector shares a
    round with one of LeNet's, so the bit adds only the comparison's rounds.

    Rounds beside LeNet's own: the Laplacian is squared in conv1's activation; the whitening
    is multiplied in fc1's round, the distances squared in fc1's activation; the comparison
    runs between fc1 and fc2; the AND of the class bits is multiplied in fc2's round.
    ``models.encrypted.lenet_convs`` + ``lenet_fc`` + ``head`` is the same classifier
    without the detector (the tests check that both give the same difference)."""
    act = arch.activation
    edges = laplacian(x) if features == "conv_laplacian" else None
    conv1, conv2, energy = lenet_convs(arch, params, x, square_too=edges)
    pre_fc1, projected = multiply_together(
        [
            ("matmul", conv2.flatten(1), params["fc1.w"].t()),
            ("matmul", _joined(_conv_blocks(x, conv1, conv2, energy)), detector["ood.w"]),
        ]
    )
    fc1, squared = _activate_and_square(
        pre_fc1 + params["fc1.b"], act, _distance_terms(detector, projected)
    )
    bits = _bits(_margins(detector, squared))
    flags = local(lambda b: b[:, 0], bits)
    fc2_weights = params["fc2.w"].t()
    if bits.shape[1] > 1:
        pre_fc2, flags = multiply_together(
            [("matmul", fc1, fc2_weights), ("mul", flags, bits[:, 1])]
        )
        for c in range(2, bits.shape[1]):
            flags = flags * bits[:, c]
    else:
        pre_fc2 = fc1.matmul(fc2_weights)
    fc2 = _activate(pre_fc2 + params["fc2.b"], act)
    return head(arch, params, fc2), flags


def share_detector(
    crypten: ModuleType,
    card: DetectorCard,
    sizes: list[int],
    detector_params: Params | None,
    rank: int,
) -> OrderedDict[str, TensorLike]:
    """Secret-share party 1's folded detector; party 0 passes ``None`` and learns shapes only."""
    if (rank == 1) != (detector_params is not None):
        raise ValueError("exactly the model owner (party 1) passes the detector")
    encrypted_detector: OrderedDict[str, TensorLike] = OrderedDict()
    for name, shape in detector_shapes(card, sizes).items():
        plain = torch.empty(shape) if detector_params is None else detector_params[name]
        encrypted_detector[name] = crypten.cryptensor(plain, src=1)
    return encrypted_detector
