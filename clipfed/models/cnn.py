"""The small CNN (~0.5M parameters) used for CPU experiments."""

from __future__ import annotations

import torch
from torch import nn

from clipfed.models.base import ClassifierNet
from clipfed.models.registry import MODELS


class SmallCNN(ClassifierNet):
    """Three conv-pool stages and a 192-wide hidden layer; no BatchNorm, so FedAvg is exact."""

    def __init__(self, num_classes: int, feature_dim: int = 192) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, feature_dim), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@MODELS.register("cnn")
def small_cnn(num_classes: int) -> ClassifierNet:
    return SmallCNN(num_classes)
