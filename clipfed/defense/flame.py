"""FLAME (Nguyen et al., USENIX Security 2022): HDBSCAN (scikit-learn) on pairwise cosine
distances with min cluster size n/2 + 1, keep the largest cluster, clip kept updates to the median
norm of all updates, add Gaussian noise with sigma = ``flame-noise`` x that norm. HDBSCAN is
O(n^2) in memory and time over the distance matrix."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Message
from sklearn.cluster import HDBSCAN

from clipfed.defense.registry import DEFENSES
from clipfed.defense.strategy import DefenseStrategy
from clipfed.defense.updates import clip_to_norm


def flame_cluster(updates: torch.Tensor) -> np.ndarray:
    """Indices of the largest HDBSCAN cluster (all, if HDBSCAN finds no cluster)."""
    n = len(updates)
    unit = F.normalize(updates.double(), dim=1)
    distances = (1 - unit @ unit.T).clamp_min(0).numpy()
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed",
                     allow_single_cluster=True).fit_predict(distances)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.arange(n)
    return np.flatnonzero(labels == np.bincount(clustered).argmax())


@DEFENSES.register("flame")
class FlameDefense(DefenseStrategy):
    min_filter_updates = 3  # HDBSCAN needs a few points to find a majority cluster

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        if len(replies) < self.min_filter_updates:  # combine() still clips to this round's median
            return replies
        updates, _, _ = self.updates(replies)
        self.round_values["bound"] = updates.norm(dim=1).quantile(0.5)  # median norm of *all* updates
        keep = set(flame_cluster(updates).tolist())
        return [m for i, m in enumerate(replies) if i in keep]

    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        updates, base, keys = self.updates(replies)
        bound = self.round_values.get("bound", updates.norm(dim=1).quantile(0.5))
        mean_update = clip_to_norm(updates, bound).mean(0)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1009 + server_round)
        noise = torch.randn(mean_update.shape, generator=generator) * self.cfg.flame_noise * float(bound)
        self.details["clip_bound"] = round(float(bound), 4)
        return self.apply_update(mean_update + noise, base, keys, replies)
