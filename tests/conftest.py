"""Shared fixtures: a tiny CIFAR-format npz (same layout as shared/assets) and isolated caches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clipfed.bench.synthetic import jpeg_blob
from clipfed.data.cifar import NPZ_NAME, load_cifar10

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHARED_ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable images: each class has its own fixed mean colour, plus noise."""
    palette = np.random.default_rng(1234).integers(30, 226, size=(10, 3))
    noise = rng.normal(0, 20, size=(len(labels), 32, 32, 3))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_fake_cifar(root: Path, n_train: int = 400, n_test: int = 200, seed: int = 0) -> Path:
    """A CIFAR-10 npz in the offline format, with two exact-pixel rows per split."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"classes": np.asarray(CLASSES)}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = class_images(labels, rng)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
        arrays[f"{split}_jpeg_blob"], arrays[f"{split}_jpeg_offsets"] = jpeg_blob(images)
        arrays[f"{split}_exact_idx"] = np.asarray([0, 1], dtype=np.int32)
        arrays[f"{split}_exact_pixels"] = images[:2].transpose(0, 3, 1, 2).reshape(2, -1)
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    path = root / "cifar10" / NPZ_NAME
    np.savez(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Decoded-data caches go to a per-session temp folder, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "clipfed-cache"
    monkeypatch.setenv("CLIPFED_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake-cifar")
    write_fake_cifar(root)
    return root


@pytest.fixture(autouse=True)
def _fresh_loader_cache() -> None:
    load_cifar10.cache_clear()


@pytest.fixture(scope="session")
def server_data(fake_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A server dataset synthesised from the fake CIFAR's public pool (public-pool-fraction 0.5),
    with a reference teacher: what CLIP-Fed, teacher-only and FLTrust need, built once."""
    from clipfed.data_synth import SynthConfig, build_server_dataset
    from clipfed.data_synth.config import FilterConfig, ImageConfig, PoolConfig
    from clipfed.teacher import TeacherSpec

    cfg = SynthConfig(data_dir=str(fake_data_dir), images=ImageConfig(pool=PoolConfig(public_pool_fraction=0.5)),
                      teacher=TeacherSpec(backend="reference", reference_epochs=25),
                      filter=FilterConfig(threshold=0.2), threads=1)
    return build_server_dataset(cfg, tmp_path_factory.mktemp("synth")).dataset


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The test computes with one torch thread (pinned floats), and the next test gets back the
    count it had: torch's thread count is process-wide."""
    from clipfed.devices import torch_threads

    with torch_threads(1):
        yield
