"""CIFAR-10 / CIFAR-10-LT loading, federated partitioning and the server's public pool."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from clipfed.data.cifar import (
    DataNotFoundError,
    ImageSet,
    load_cifar10,
    resolve_data_dir,
)
from clipfed.data.partition import (
    FederatedSplit,
    long_tail_counts,
    malicious_clients,
    public_pool_indices,
    split_train,
)

if TYPE_CHECKING:
    from clipfed.config import RunConfig

__all__ = [
    "DataNotFoundError",
    "FederatedSplit",
    "ImageSet",
    "load_cifar10",
    "load_federated",
    "long_tail_counts",
    "malicious_clients",
    "public_pool_indices",
    "resolve_data_dir",
    "split_train",
]


@lru_cache(maxsize=4)
def load_federated(cfg: RunConfig) -> tuple[ImageSet, ImageSet, FederatedSplit]:
    """(train, test, split) for ``cfg``, memoised per process so clients reuse it across rounds."""
    train, test = load_cifar10(cfg.data_dir)
    return train, test, split_train(train.labels, cfg)
