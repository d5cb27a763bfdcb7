"""CIFAR ResNets: ResNet-20 (He et al. 2016, 0.27M) and the CIFAR variant of ResNet-18 (11M)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipfed.models.base import ClassifierNet
from clipfed.models.registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ClassifierNet):
    """A 3x3-stem ResNet for 32x32 inputs; ``widths`` and ``depths`` pick the family member."""

    def __init__(self, num_classes: int, widths: tuple[int, ...], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, width, stride))
                in_planes = width
        self.stages = nn.Sequential(*layers)
        self.feature_dim = in_planes
        self.head = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@MODELS.register("resnet20")
def resnet20(num_classes: int) -> ClassifierNet:
    return CifarResNet(num_classes, widths=(16, 32, 64), depths=(3, 3, 3))


@MODELS.register("resnet18")
def resnet18(num_classes: int) -> ClassifierNet:
    return CifarResNet(num_classes, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2))
