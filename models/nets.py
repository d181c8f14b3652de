"""The two diagnosis networks, designed for what they cost under two-party MPC.

Under secret sharing, convolutions, linear layers, average pooling and (folded) batch norm
are almost free; every ReLU and max-pool comparison costs rounds and megabytes. So:

* ``LeNet`` is LeCun's LeNet-5 with average-pool subsampling (as in the 1998 paper), batch
  norm, a stride-2 first convolution (4x fewer multiply-adds: under MPC every convolution
  runs several times on 64-bit integers, which the CPU does without BLAS), pooling *before*
  the activation (4x fewer activations) and, by default, a quadratic activation
  ``(x + 2)^2 / 8`` — the least-squares quadratic fit of ReLU on [-2, 2] and one secret
  multiplication instead of a comparison circuit.
* ``ResNet18`` is torchvision's ResNet-18 (2 classes, 1-channel stem) with the stem's
  max-pool replaced by an average pool placed before the stem ReLU. Residual blocks are
  torchvision's own.
* ``ResNet18MPC`` (backbone ``resnet18-mpc``) is the same ResNet-18 (same convolutions, same
  batch norms, same parameters) designed for MPC: one activation per residual block, inside
  the branch right after its first batch norm, and none after the residual sum (9 activation
  layers instead of 17), and by default the quadratic activation (one multiplication, one
  round, instead of a ~10-round comparison circuit). Every activation's input comes straight
  out of a batch norm; at inference the batch norms fold into the convolutions. Measured
  (README, *Training*): at 128 px the all-quadratic network stays far below the ReLU
  ResNet-18 in AUC. ``relu_stages`` N puts ReLU back in the last N residual stages only,
  where feature maps are small (stage 4 at 128 px: 4 x 4 x 512), so a comparison there costs
  few bytes but its ~9 rounds per layer.

Both return two logits; calibration (temperature) lives beside the weights in the checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

BACKBONES = ("lenet", "resnet18", "resnet18-mpc")
ACTIVATIONS = ("quad", "relu")


def quad(x: torch.Tensor) -> torch.Tensor:
    """ReLU's quadratic stand-in: ``(x + 2)^2 / 8`` (one multiplication under MPC)."""
    return (x + 2.0).square() / 8.0


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    return quad(x) if activation == "quad" else torch.relu(x)


@dataclass(frozen=True)
class Architecture:
    """The public description of a network: everything but the weights.

    Party 1 (the model owner) sends this to party 0 so both can run the same MPC
    program; it reveals the shape of the network, never its parameters.
    """

    backbone: str = "lenet"
    image_size: int = 64
    activation: str = "quad"
    #: resnet18-mpc with the quadratic activation: the last N of its 4 residual stages use
    #: ReLU instead (0: none)
    relu_stages: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {BACKBONES}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {ACTIVATIONS}")
        if self.image_size % 16 or self.image_size < 32:
            raise ValueError("image_size must be a multiple of 16 and at least 32")
        if self.backbone == "resnet18" and self.activation != "relu":
            raise ValueError(
                "resnet18 uses ReLU (17 layers of squares are numerically unstable); "
                "resnet18-mpc is the ResNet-18 designed for the quadratic activation"
            )
        if not 0 <= self.relu_stages <= 4:
            raise ValueError("relu_stages must be between 0 and 4")
        if self.relu_stages and (self.backbone != "resnet18-mpc" or self.activation != "quad"):
            raise ValueError("relu_stages applies to resnet18-mpc with the quad activation only")

    def stage_activation(self, stage: int) -> str:
        """The activation of residual stage ``stage`` (1-4; 0 is the stem) of resnet18-mpc."""
        return "relu" if stage > 4 - self.relu_stages else self.activation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LeNet(nn.Module):
    """LeNet-5 for ``1 x S x S`` input, average-pool subsampling, MPC-friendly activation."""

    def __init__(self, image_size: int = 64, activation: str = "quad") -> None:
        super().__init__()
        self.activation = activation
        self.conv1 = nn.Conv2d(1, 6, 5, stride=2, padding=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.bn2 = nn.BatchNorm2d(16)
        side = image_size // 8
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.bn3 = nn.BatchNorm1d(120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.activation
        x = activate(nn.functional.avg_pool2d(self.bn1(self.conv1(x)), 2), act)
        x = activate(nn.functional.avg_pool2d(self.bn2(self.conv2(x)), 2), act)
        x = activate(self.bn3(self.fc1(x.flatten(1))), act)
        x = activate(self.fc2(x), act)
        return self.fc3(x)


class ResNet18(ResNet):
    """torchvision ResNet-18, 2 classes, grayscale stem, stem pool = avg pool before ReLU."""

    def __init__(self) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=2)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.maxpool(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MPCBlock(BasicBlock):
    """torchvision's basic block with one activation, inside the branch, after its first BN:
    ``out = bn2(conv2(act(bn1(conv1(x))))) + shortcut(x)``; no activation after the sum."""

    activation = "quad"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = activate(self.bn1(self.conv1(x)), self.activation)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class ResNet18MPC(ResNet):
    """ResNet-18 for two-party MPC: 9 activation layers (stem + one per block), quadratic by
    default, ReLU in the last ``relu_stages`` residual stages; same parameters and names as
    ``ResNet18``."""

    def __init__(self, activation: str = "quad", relu_stages: int = 0) -> None:
        super().__init__(MPCBlock, [2, 2, 2, 2], num_classes=2)
        arch = Architecture("resnet18-mpc", activation=activation, relu_stages=relu_stages)
        self.activation = activation
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        for stage, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), 1):
            for block in layer:
                assert isinstance(block, MPCBlock)
                block.activation = arch.stage_activation(stage)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = activate(self.maxpool(self.bn1(self.conv1(x))), self.activation)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_model(arch: Architecture) -> nn.Module:
    """A freshly initialised torch network for ``arch``."""
    if arch.backbone == "lenet":
        return LeNet(arch.image_size, arch.activation)
    if arch.backbone == "resnet18-mpc":
        return ResNet18MPC(arch.activation, arch.relu_stages)
    return ResNet18()


def default_architecture(backbone: str) -> Architecture:
    return Architecture(backbone=backbone, activation="relu" if backbone == "resnet18" else "quad")
