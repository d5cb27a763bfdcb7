"""The interface every classifier exposes: penultimate features and a linear head.

CLIP-Fed's prototype loss and the pre-aggregation scoring read the penultimate features, so
every architecture splits ``forward`` into ``features`` and ``head``.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """``forward(x) == head(features(x))``; ``feature_dim`` is the width of ``features``."""

    feature_dim: int
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
