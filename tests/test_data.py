from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_ASSETS

from clipfed.config import RunConfig
from clipfed.data import (
    DataNotFoundError,
    load_cifar10,
    long_tail_counts,
    malicious_clients,
    split_train,
)
from clipfed.data.cifar import NPZ_NAME

LABELS = np.repeat(np.arange(10), 5000)  # the CIFAR-10 train label histogram


def cfg(**overrides: object) -> RunConfig:
    return RunConfig.from_flower(overrides)


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_split_is_deterministic_disjoint_and_excludes_the_public_pool(partition: str) -> None:
    config = cfg(partition=partition, **{"num-clients": 20, "public-pool-fraction": 0.1})
    first, second = split_train(LABELS, config), split_train(LABELS, config)
    assert np.array_equal(first.public_pool, second.public_pool)
    assert all(np.array_equal(a, b) for a, b in zip(first.clients, second.clients, strict=True))

    shards = np.concatenate(first.clients)
    assert len(np.unique(shards)) == len(shards), "client shards overlap"
    assert not np.intersect1d(shards, first.public_pool).size, "a client holds pool images"
    assert len(shards) + len(first.public_pool) == len(LABELS)
    assert np.array_equal(np.bincount(LABELS[first.public_pool]), np.full(10, 500))


def test_seed_changes_the_split() -> None:
    a = split_train(LABELS, cfg(seed=0))
    b = split_train(LABELS, cfg(seed=1))
    assert not np.array_equal(a.clients[0], b.clients[0])


def test_dirichlet_skews_labels_and_respects_min_partition_size() -> None:
    split = split_train(LABELS, cfg(**{"dirichlet-alpha": 0.1, "min-partition-size": 50}))
    sizes = [len(c) for c in split.clients]
    assert min(sizes) >= 50
    dominant = [np.bincount(LABELS[c], minlength=10).max() / len(c) for c in split.clients]
    assert np.median(dominant) > 0.4  # IID would give ~0.1


def test_long_tail_counts_follow_the_exponential_profile() -> None:
    counts = long_tail_counts(np.full(10, 5000), 0.01)
    expected = [int(np.floor(5000 * 0.01 ** (c / 9))) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] == 5000 and counts[-1] == 50


def test_cifar10_lt_split_has_the_lt_class_counts() -> None:
    split = split_train(LABELS, cfg(dataset="cifar10-lt", **{"public-pool-fraction": 0.0}))
    held = np.bincount(LABELS[np.concatenate(split.clients)], minlength=10)
    assert held.tolist() == long_tail_counts(np.full(10, 5000), 0.01).tolist()


def test_malicious_clients_are_drawn_from_the_seed() -> None:
    chosen = malicious_clients(cfg(**{"num-malicious": 4}))
    assert len(chosen) == 4 and all(0 <= c < 20 for c in chosen)
    assert chosen == malicious_clients(cfg(**{"num-malicious": 4}))
    assert chosen != malicious_clients(cfg(seed=3, **{"num-malicious": 4}))
    assert malicious_clients(cfg(**{"num-malicious": 0})) == frozenset()


def test_npz_is_decoded_with_exact_rows_and_cached(fake_data_dir: Path, isolated_cache: Path) -> None:
    train, test = load_cifar10(str(fake_data_dir))
    assert train.images.shape == (400, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.labels.tolist()[:3] == [0, 1, 2] and train.classes[0] == "airplane"
    with np.load(fake_data_dir / "cifar10" / NPZ_NAME) as npz:
        exact = npz["train_exact_pixels"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(train.images[:2], exact)
    assert list(isolated_cache.rglob("train_images.npy")), "decoded arrays were not cached"


def test_data_dir_from_environment(fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFED_DATA_DIR", str(fake_data_dir))
    assert len(load_cifar10("")[1]) == 200


def test_missing_data_says_how_to_provide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPFED_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="data-dir.*CLIPFED_DATA_DIR"):
        load_cifar10("")
    with pytest.raises(DataNotFoundError, match=f"cifar10/{NPZ_NAME}.*clipfed download"):
        load_cifar10(str(tmp_path))


@pytest.mark.skipif(not (SHARED_ASSETS / "cifar10" / NPZ_NAME).exists(), reason="no shared assets")
def test_the_offline_cifar10_copy_loads_with_real_labels() -> None:
    train, test = load_cifar10(str(SHARED_ASSETS))
    assert train.images.shape == (50000, 32, 32, 3) and len(test) == 10000
    assert np.bincount(train.labels).tolist() == [5000] * 10
