"""The interface every classifier exposes: penultimate features and a linear head.

CLIP-Fed's prototype loss and the pre-aggregation scoring read the penultimate features, so
every architecture splits ``forward`` into ``features`` and ``head``.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassifierNet(nn.Module):
    """``forward(x) == head(features(x))``; ``feature_dim`` is the width of ``features``.

    A new architecture subclasses this, sets both attributes in ``__init__`` and implements
    ``features``; it inherits ``forward``. Inputs are what ``clipfed.training.to_tensor`` makes of
    the uint8 images: float32 (N, 3, H, W), normalised with CIFAR's per-channel mean and std (the
    registered models expect H = W = 32). Any ``nn.Module`` buffers it declares (BatchNorm running
    statistics) travel and are averaged as statistics, not updates (``clipfed.models.state``).

    Attributes:
        feature_dim: D, the width of the penultimate features.
        head: The final ``nn.Linear(feature_dim, num_classes)``; its output is the logits.
    """

    feature_dim: int
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Penultimate features (what CLIP-Fed's prototype loss and scoring read).

        Args:
            x: Normalised float32 images (N, 3, H, W).

        Returns:
            Float32 features (N, feature_dim), not normalised.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes), unnormalised (``head(features(x))``)."""
        return self.head(self.features(x))
