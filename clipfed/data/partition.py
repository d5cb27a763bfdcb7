"""Who holds which training image: the public pool, CIFAR-10-LT, IID/Dirichlet client shards.

The whole split is a pure function of the run config, so every process (server, each client)
recomputes it identically from the seed instead of shipping indices around.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clipfed.streams import Stream, stream_rng

if TYPE_CHECKING:
    from clipfed.config import RunConfig

# Independent random streams derived from the run seed, one per purpose.


@dataclass(frozen=True)
class FederatedSplit:
    """Indices into the train split: the server's public pool and each client's shard (disjoint)."""

    public_pool: np.ndarray
    clients: tuple[np.ndarray, ...]


def long_tail_counts(available: np.ndarray, imbalance_factor: float) -> np.ndarray:
    """CIFAR-LT per-class counts ``floor(n_max * imb^(c / (C-1)))`` (Cao et al. 2019; CLIP2FL).

    ``n_max`` is the head class's available count, so with the full 5,000 per class and
    ``imb=0.01`` this gives 5000 down to 50.
    """
    num_classes = len(available)
    exponents = np.arange(num_classes) / max(num_classes - 1, 1)
    wanted = np.floor(available.max() * imbalance_factor**exponents).astype(np.int64)
    return np.minimum(wanted, available)


def _holdout_size(class_count: int, fraction: float) -> int:
    return round(fraction * class_count)


def _stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, size=_holdout_size(len(members), fraction), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def _dirichlet_shards(labels: np.ndarray, cfg: RunConfig) -> list[np.ndarray]:
    """Dirichlet label skew through flwr-datasets' DirichletPartitioner on a label-only dataset."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=cfg.num_clients,
        partition_by="label",
        alpha=cfg.dirichlet_alpha,
        min_partition_size=cfg.min_partition_size,
        self_balancing=False,
        shuffle=True,
        seed=cfg.seed,
    )
    partitioner.dataset = Dataset.from_dict(
        {"label": labels.tolist(), "position": np.arange(len(labels)).tolist()}
    )
    try:
        return [np.asarray(partitioner.load_partition(i)["position"], dtype=np.int64)
                for i in range(cfg.num_clients)]
    except ValueError as err:  # flwr-datasets gives up after 10 redraws and names alpha only
        from clipfed.config import ConfigError

        problem = (f"min-partition-size={cfg.min_partition_size}: no Dirichlet(dirichlet-alpha="
                   f"{cfg.dirichlet_alpha}) draw gave each of the num-clients={cfg.num_clients} clients that "
                   f"many of the {len(labels)} images ({err}); allowed: a smaller min-partition-size or "
                   "num-clients, or a larger dirichlet-alpha")
        raise ConfigError.listing([problem]) from err


def public_pool_indices(train_labels: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """The server's public pool: a stratified ``fraction`` of the train split, drawn from ``seed``."""
    return _stratified_holdout(train_labels, fraction, stream_rng(seed, Stream.PUBLIC_POOL))


def client_class_counts(train_counts: Sequence[int], cfg: RunConfig) -> np.ndarray:
    """Per-class image counts left to the clients by ``split_train`` from a train split with
    ``train_counts`` images per class: sizes only, so a config is checked without the data."""
    left = np.array([n - _holdout_size(n, cfg.public_pool_fraction) for n in train_counts], dtype=np.int64)
    return long_tail_counts(left, cfg.imbalance_factor) if cfg.dataset == "cifar10-lt" else left


def split_train(train_labels: np.ndarray, cfg: RunConfig) -> FederatedSplit:
    """Hold out the public pool (stratified), apply the LT profile, then shard among clients."""
    pool = public_pool_indices(train_labels, cfg.seed, cfg.public_pool_fraction)
    remaining = np.setdiff1d(np.arange(len(train_labels)), pool)
    if cfg.dataset == "cifar10-lt":
        rng = stream_rng(cfg.seed, Stream.LONG_TAIL)
        rest_labels = train_labels[remaining]
        available = np.bincount(rest_labels, minlength=cfg.num_classes)
        counts = long_tail_counts(available, cfg.imbalance_factor)
        keep = [rng.choice(remaining[rest_labels == c], size=counts[c], replace=False)
                for c in range(cfg.num_classes)]
        remaining = np.sort(np.concatenate(keep))
    if cfg.partition == "iid":
        order = stream_rng(cfg.seed, Stream.IID_SPLIT).permutation(remaining)
        shards = [np.sort(s) for s in np.array_split(order, cfg.num_clients)]
    else:
        shards = [np.sort(remaining[s]) for s in _dirichlet_shards(train_labels[remaining], cfg)]
    return FederatedSplit(public_pool=pool, clients=tuple(shards))


def malicious_clients(cfg: RunConfig) -> frozenset[int]:
    """The partition ids of malicious clients: ``num-malicious`` drawn from the seed."""
    rng = stream_rng(cfg.seed, Stream.ROLES)
    chosen = rng.choice(cfg.num_clients, size=cfg.num_malicious, replace=False)
    return frozenset(int(i) for i in chosen)
