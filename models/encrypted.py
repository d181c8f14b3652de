"""Encrypted inference: the networks of ``models.nets`` as one functional MPC program.

Party 1 (the model owner) folds its checkpoint into a few plaintext tensors and
secret-shares them; party 0 (the patient side) secret-shares the image. The same
:func:`forward` runs on plaintext torch tensors (to check the folding) and on CrypTen
tensors (the real thing), so the encrypted program cannot drift from the tested one.

What the folding buys under MPC:
* batch norm is folded into the preceding convolution / linear layer (no extra layer);
* the last layer computes only the *temperature-scaled logit difference*
  ``d = (logit_tumor - logit_no_tumor) / T``. With two classes, the revealed pair
  (label, calibrated confidence) and ``d`` determine each other exactly
  (label = d > 0, confidence = sigmoid(|d|)), so revealing ``d`` reveals nothing beyond the
  prediction and its confidence, and no encrypted softmax (~74 rounds) is needed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.nn import functional as F

from models.nets import Architecture, LeNet, ResNet18, ResNet18MPC, build_model

#: A ``torch.Tensor`` (the plaintext check) or a CrypTen ``CrypTensor`` (the real thing).
#: CrypTen is untyped, so this is ``Any``: the program calls only methods both types have,
#: and branches on :func:`_is_plain` where their APIs differ (``conv2d``, ``avg_pool2d``).
TensorLike: TypeAlias = Any
#: Party 1's folded plaintext parameters, in the order both parties share them.
Params = OrderedDict[str, torch.Tensor]


@dataclass(frozen=True)
class Prediction:
    label: int  # index into models.preprocessing.CLASS_NAMES
    #: calibrated probability of ``label``: in [0.5, 1] at the default threshold 0.5; at a
    #: screening threshold t < 0.5 a "tumor" label can carry a probability in [t, 0.5)
    confidence: float
    #: the image is unlike the training data: the confidence is not to be trusted
    unfamiliar: bool = False

    @staticmethod
    def from_logit_difference(
        d: float, threshold: float = 0.5, unfamiliar: bool = False
    ) -> Prediction:
        """Label "tumor" when the calibrated P(tumor) = sigmoid(d) reaches ``threshold``."""
        label = int(d > math.log(threshold / (1.0 - threshold)))
        p_tumor = 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))
        return Prediction(label, p_tumor if label else 1.0 - p_tumor, unfamiliar)


# ---------------------------------------------------------------------------- folding


def _fold_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.weight is None or bn.bias is None or bn.running_mean is None or bn.running_var is None:
        raise ValueError("only batch norm with affine parameters and running statistics folds")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    folded_bias = bn.bias - bn.running_mean * scale
    if bias is not None:
        folded_bias = folded_bias + bias * scale
    return weight * scale.view(shape), folded_bias


def _conv_entry(
    params: Params, name: str, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None = None
) -> None:
    weight, bias = conv.weight, conv.bias
    if bn is not None:
        weight, bias = _fold_bn(weight, bias, bn)
    params[f"{name}.w"] = weight
    params[f"{name}.b"] = (bias if bias is not None else torch.zeros(weight.shape[0])).view(
        -1, 1, 1
    )


def _difference_head(params: Params, name: str, linear: nn.Linear, temperature: float) -> None:
    params[f"{name}.w"] = (linear.weight[1] - linear.weight[0]).unsqueeze(0) / temperature
    params[f"{name}.b"] = (linear.bias[1] - linear.bias[0]).view(1) / temperature


#: The torch class of each ResNet backbone: same parameter names, different programs.
_RESNETS = {"resnet18": ResNet18, "resnet18-mpc": ResNet18MPC}


@torch.no_grad()
def fold(model: nn.Module, arch: Architecture, temperature: float = 1.0) -> Params:
    """Plaintext parameters of the MPC program, in the order both parties share them."""
    model = model.eval()
    if not _runs_announced_activations(model, arch):
        raise ValueError(f"a {type(model).__name__} does not match the announced {arch}")
    params: Params = OrderedDict()
    if arch.backbone == "lenet" and isinstance(model, LeNet):
        _conv_entry(params, "conv1", model.conv1, model.bn1)
        _conv_entry(params, "conv2", model.conv2, model.bn2)
        params["fc1.w"], params["fc1.b"] = _fold_bn(model.fc1.weight, model.fc1.bias, model.bn3)
        params["fc2.w"], params["fc2.b"] = model.fc2.weight, model.fc2.bias
        _difference_head(params, "fc3", model.fc3, temperature)
    elif isinstance(model, ResNet18 | ResNet18MPC) and type(model) is _RESNETS.get(arch.backbone):
        _conv_entry(params, "stem", model.conv1, model.bn1)
        for layer_name in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(model, layer_name)):
                name = f"{layer_name}.{index}"
                _conv_entry(params, f"{name}.conv1", block.conv1, block.bn1)
                _conv_entry(params, f"{name}.conv2", block.conv2, block.bn2)
                if block.downsample is not None:
                    _conv_entry(params, f"{name}.down", block.downsample[0], block.downsample[1])
        _difference_head(params, "fc", model.fc, temperature)
    else:
        raise ValueError(f"a {type(model).__name__} does not match the announced {arch}")
    return OrderedDict((k, v.detach().float().contiguous()) for k, v in params.items())


@torch.no_grad()
def unfold_lenet(params: Mapping[str, torch.Tensor], arch: Architecture) -> nn.Module:
    """The torch LeNet whose :func:`fold` (at temperature 1) is ``params``: the weights as
    folded, batch norms that compute the identity, and a last layer whose two logits are 0
    and the scaled logit difference. For weights changed on the folded program (encrypted
    fine-tuning, ``models.encrypted_training``): they are saved as an ordinary checkpoint."""
    if arch.backbone != "lenet":
        raise ValueError(f"unfold_lenet unfolds a LeNet, not a {arch.backbone}")
    model = build_model(arch)
    assert isinstance(model, LeNet)
    for bn in (model.bn1, model.bn2, model.bn3):
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(math.sqrt(1.0 + bn.eps))  # (x - 0) / sqrt(1 + eps) * sqrt(1 + eps)
        bn.bias.zero_()
    for layer in ("conv1", "conv2"):
        conv = getattr(model, layer)
        conv.weight.copy_(params[f"{layer}.w"])
        conv.bias.copy_(params[f"{layer}.b"].view(-1))
    for layer in ("fc1", "fc2"):
        linear = getattr(model, layer)
        linear.weight.copy_(params[f"{layer}.w"])
        linear.bias.copy_(params[f"{layer}.b"])
    model.fc3.weight.zero_()
    model.fc3.bias.zero_()
    model.fc3.weight[1].copy_(params["fc3.w"].view(-1))
    model.fc3.bias[1] = params["fc3.b"].view(())
    return model.eval()


@torch.no_grad()
def with_head(
    model: nn.Module, arch: Architecture, params: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A copy of ``model`` whose last layer is the folded one in ``params`` (at temperature 1:
    logits 0 and the scaled logit difference); the rest of ``params`` must be ``model``'s
    own folding. For a last layer changed on the folded program (head-only encrypted
    fine-tuning, ``models.encrypted_training.encrypted_head_step``)."""
    layer = "fc3" if arch.backbone == "lenet" else "fc"
    own = fold(model, arch)
    changed = [
        name
        for name, value in own.items()
        if not name.startswith(f"{layer}.") and not torch.equal(value, params[name])
    ]
    if changed:
        raise ValueError(f"only the last layer may differ from the model's own; {changed[:3]} do")
    copied = copy.deepcopy(model)
    linear = getattr(copied, layer)
    linear.weight.zero_()
    linear.bias.zero_()
    linear.weight[1].copy_(params[f"{layer}.w"].view(-1))
    linear.bias[1] = params[f"{layer}.b"].view(())
    return copied.eval()


def _runs_announced_activations(model: nn.Module, arch: Architecture) -> bool:
    """Activations are not parameters: a network with other activations folds to the same
    tensors but is another program, so check them against the card."""
    if isinstance(model, LeNet):
        return model.activation == arch.activation
    if isinstance(model, ResNet18MPC):
        stages = (model.layer1, model.layer2, model.layer3, model.layer4)
        return model.activation == arch.activation and all(
            getattr(block, "activation", None) == arch.stage_activation(stage)
            for stage, layer in enumerate(stages, 1)
            for block in layer
        )
    return True


def parameter_shapes(arch: Architecture) -> OrderedDict[str, torch.Size]:
    """Shapes of :func:`fold`'s output, known from the public architecture alone."""
    return OrderedDict(_shapes(arch))


@functools.lru_cache(maxsize=16)
def _shapes(arch: Architecture) -> tuple[tuple[str, torch.Size], ...]:
    return tuple((k, v.shape) for k, v in fold(build_model(arch), arch).items())


# ---------------------------------------------------------------------------- the program


def _is_plain(x: TensorLike) -> bool:
    return isinstance(x, torch.Tensor)


def _conv(
    x: TensorLike, params: Mapping[str, TensorLike], name: str, stride: int = 1, padding: int = 0
) -> TensorLike:
    weight = params[f"{name}.w"]
    if _is_plain(x):
        out = F.conv2d(x, weight, stride=stride, padding=padding)
    else:
        out = x.conv2d(weight, stride=stride, padding=padding)
    return out + params[f"{name}.b"]


def _linear(x: TensorLike, params: Mapping[str, TensorLike], name: str) -> TensorLike:
    return x.matmul(params[f"{name}.w"].t()) + params[f"{name}.b"]


def _avg_pool(
    x: TensorLike, kernel: int, stride: int | None = None, padding: int = 0
) -> TensorLike:
    if _is_plain(x):
        return F.avg_pool2d(x, kernel, stride=stride, padding=padding)
    return x.avg_pool2d(kernel, stride=stride, padding=padding)


def _activate(x: TensorLike, activation: str) -> TensorLike:
    if activation == "quad":
        return (x + 2.0).square() / 8
    if _is_plain(x) or _relu_comparison == "crypten":
        return x.relu()
    from models.sign_gate import relu

    return relu(x)


#: How the encrypted program's ReLUs compare. ``"gate"``: ``models.sign_gate.relu``, one
#: opening in a 24-bit ring, then one multiplication (2 rounds; exact but for values within
#: 2^-8 of 0). ``"crypten"``: CrypTen's ``relu``, its 64-bit adder circuit (about 10
#: rounds), kept to measure against.
RELU_COMPARISONS = ("gate", "crypten")
_relu_comparison = "gate"


@contextlib.contextmanager
def relu_comparison(name: str) -> Iterator[None]:
    """Run the encrypted ReLUs with comparison ``name`` (one of :data:`RELU_COMPARISONS`)."""
    global _relu_comparison
    if name not in RELU_COMPARISONS:
        raise ValueError(f"ReLU comparison {name!r}: one of {', '.join(RELU_COMPARISONS)}")
    before, _relu_comparison = _relu_comparison, name
    try:
        yield
    finally:
        _relu_comparison = before


def forward(arch: Architecture, params: Mapping[str, TensorLike], x: TensorLike) -> TensorLike:
    """Scaled logit difference ``(B, 1)`` for images ``x`` ``(B, 1, S, S)``.

    ``params`` and ``x`` are both torch tensors (plaintext check) or both CrypTen tensors.
    """
    return head(arch, params, penultimate(arch, params, x))


def head(arch: Architecture, params: Mapping[str, TensorLike], features: TensorLike) -> TensorLike:
    """The last layer: penultimate features ``(B, D)`` -> scaled logit difference ``(B, 1)``."""
    return _linear(features, params, "fc3" if arch.backbone == "lenet" else "fc")


def _activate_and_square(
    x: TensorLike, activation: str, other: TensorLike
) -> tuple[TensorLike, TensorLike]:
    """``(act(x), other²)``. With the quadratic activation both squares are one
    multiplication on shares (one round): concatenated, squared, split (all local but the
    square)."""
    if activation != "quad":
        return _activate(x, activation), other.square()
    size = math.prod(x.shape[1:])
    both = local(lambda s, o: torch.cat([s.flatten(1), o.flatten(1)], 1), x + 2.0, other).square()
    activated = local(lambda b: b[:, :size].reshape(x.shape), both) / 8
    return activated, local(lambda b: b[:, size:].reshape(other.shape), both)


def local(function: Callable[..., torch.Tensor], *tensors: TensorLike) -> TensorLike:
    """``function(*tensors)`` for a step that is exact on additive shares (reshape, slice,
    concatenation, sum or difference of secrets): on shares applied to each party's share
    directly (``models.crypten_compat.on_shares``), skipping CrypTen's per-call dispatch."""
    if all(_is_plain(t) for t in tensors):
        return function(*tensors)
    from models.crypten_compat import on_shares

    return on_shares(function, *tensors)


def cat(tensors: Sequence[TensorLike], dim: int) -> TensorLike:
    """``torch.cat``, local on shares."""
    return local(lambda *parts: torch.cat(parts, dim), *tensors)


def multiply_together(pairs: Sequence[tuple[str, TensorLike, TensorLike]]) -> list[TensorLike]:
    """``[op(x, y), ...]`` for ``op`` ``"mul"`` or ``"matmul"``: on shares, independent
    multiplications in one round (``models.crypten_compat.multiply_together``)."""
    if all(_is_plain(x) for _, x, _ in pairs):
        return [getattr(torch, op)(x, y) for op, x, y in pairs]
    from models.crypten_compat import multiply_together as together

    return together(pairs)


def lenet_convs(
    arch: Architecture,
    params: Mapping[str, TensorLike],
    x: TensorLike,
    square_too: TensorLike | None = None,
) -> tuple[TensorLike, TensorLike, TensorLike | None]:
    """LeNet's activations after conv1 and after conv2, and ``square_too²`` when given,
    squared in conv1's activation round (None otherwise)."""
    act = arch.activation
    pre1 = _avg_pool(_conv(x, params, "conv1", stride=2, padding=2), 2)
    squared = None
    if square_too is None:
        conv1 = _activate(pre1, act)
    else:
        conv1, squared = _activate_and_square(pre1, act, square_too)
    conv2 = _activate(_avg_pool(_conv(conv1, params, "conv2", padding=2), 2), act)
    return conv1, conv2, squared


def lenet_fc(arch: Architecture, params: Mapping[str, TensorLike], conv2: TensorLike) -> TensorLike:
    """LeNet's penultimate features from conv2's activations (fc1, fc2)."""
    x = _activate(_linear(conv2.flatten(1), params, "fc1"), arch.activation)
    return _activate(_linear(x, params, "fc2"), arch.activation)


def penultimate(arch: Architecture, params: Mapping[str, TensorLike], x: TensorLike) -> TensorLike:
    """Features ``(B, D)`` the last layer reads (what the unfamiliarity score measures)."""
    act = arch.activation
    if arch.backbone == "lenet":
        return lenet_fc(arch, params, lenet_convs(arch, params, x)[1])
    # resnet18: torchvision's blocks (activation in the branch and after the sum);
    # resnet18-mpc: one activation per block, in the branch only (models.nets.MPCBlock).
    after_sum = arch.backbone == "resnet18"
    x = _conv(x, params, "stem", stride=2, padding=3)
    x = _activate(_avg_pool(x, 3, stride=2, padding=1), act)
    for layer in range(1, 5):
        for index in range(2):
            name = f"layer{layer}.{index}"
            stride = 2 if layer > 1 and index == 0 else 1
            stage_act = arch.stage_activation(layer) if not after_sum else act
            out = _activate(_conv(x, params, f"{name}.conv1", stride=stride, padding=1), stage_act)
            out = _conv(out, params, f"{name}.conv2", padding=1)
            shortcut = (
                _conv(x, params, f"{name}.down", stride=stride) if f"{name}.down.w" in params else x
            )
            x = _activate(out + shortcut, act) if after_sum else out + shortcut
    return _avg_pool(x, arch.image_size // 32).flatten(1)


# ---------------------------------------------------------------------------- sharing


def share_parameters(
    crypten: ModuleType, arch: Architecture, model_params: Params | None, rank: int
) -> OrderedDict[str, TensorLike]:
    """Secret-share party 1's folded parameters; party 0 passes ``None`` and learns shapes only."""
    if (rank == 1) != (model_params is not None):
        raise ValueError("exactly the model owner (party 1) passes its parameters")
    encrypted_model: OrderedDict[str, TensorLike] = OrderedDict()
    for name, shape in parameter_shapes(arch).items():
        plain = torch.empty(shape) if model_params is None else model_params[name]
        encrypted_model[name] = crypten.cryptensor(plain, src=1)
    return encrypted_model


def share_images(
    crypten: ModuleType, images: torch.Tensor | None, batch_shape: tuple[int, ...], rank: int
) -> TensorLike:
    """Secret-share party 0's preprocessed images; party 1 passes ``None``."""
    plain = images if rank == 0 else torch.empty(batch_shape)
    return crypten.cryptensor(plain, src=0)
