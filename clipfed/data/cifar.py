"""CIFAR-10 from whichever source exists: the offline npz, a torchvision folder, or a download.

Decoding the offline npz's 60,000 JPEGs takes seconds, so the decoded uint8 arrays are cached on
disk (keyed by the source file's sha256) and memory-mapped afterwards; every process of a run,
Ray actors included, then shares one page-cached copy.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

NPZ_NAME = "cifar10_recon_v1.npz"
TORCHVISION_DIR = "cifar-10-batches-py"
DATA_DIR_ENV = "CLIPFED_DATA_DIR"
CACHE_DIR_ENV = "CLIPFED_CACHE_DIR"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataNotFoundError(FileNotFoundError):
    """No CIFAR-10 source was found; the message says where we looked and how to provide one."""


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, 32, 32, 3) and integer labels, with the class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(np.asarray(self.images[indices]), self.labels[indices], self.classes)


def resolve_data_dir(data_dir: str = "") -> Path:
    """The configured ``data-dir``, else ``$CLIPFED_DATA_DIR``; an error says how to set either."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV, "")
    if not chosen:
        raise DataNotFoundError(
            "no data directory configured: set the run-config key data-dir "
            f'(--run-config "data-dir=\'/path\'") or the environment variable {DATA_DIR_ENV}. '
            f"It must hold cifar10/{NPZ_NAME} (offline copy) or a torchvision "
            f"{TORCHVISION_DIR}/ folder; `clipfed download --data-dir DIR` fetches the latter when online."
        )
    return Path(chosen).expanduser().resolve()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "clipfed")).expanduser()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_source(root: Path) -> Path | None:
    for candidate in (root / "cifar10" / NPZ_NAME, root / NPZ_NAME, root / TORCHVISION_DIR,
                      root / "cifar10" / TORCHVISION_DIR):
        if candidate.exists():
            return candidate
    return None


def _decode_npz(path: Path) -> dict[str, np.ndarray]:
    """Decode the offline npz (JPEG blobs plus exact-pixel rows) to uint8 NHWC arrays."""
    from PIL import Image

    with np.load(path, allow_pickle=False) as npz:
        out: dict[str, np.ndarray] = {"classes": np.asarray(npz["classes"]).astype(str)}
        for split in ("train", "test"):
            blob = npz[f"{split}_jpeg_blob"]
            offsets = npz[f"{split}_jpeg_offsets"]
            images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
            for i in range(len(offsets) - 1):
                jpeg = blob[offsets[i] : offsets[i + 1]].tobytes()
                images[i] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            exact_idx = npz[f"{split}_exact_idx"]
            exact = npz[f"{split}_exact_pixels"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            images[exact_idx] = exact
            out[f"{split}_images"] = images
            out[f"{split}_labels"] = npz[f"{split}_labels"].astype(np.int64)
    return out


def _read_torchvision(folder: Path) -> dict[str, np.ndarray]:
    """Read a torchvision-layout folder (``cifar-10-batches-py``) through torchvision itself."""
    from torchvision.datasets import CIFAR10

    out: dict[str, np.ndarray] = {}
    for split, train in (("train", True), ("test", False)):
        dataset = CIFAR10(str(folder.parent), train=train, download=False)
        out[f"{split}_images"] = np.asarray(dataset.data, dtype=np.uint8)
        out[f"{split}_labels"] = np.asarray(dataset.targets, dtype=np.int64)
        out["classes"] = np.asarray(dataset.classes).astype(str)
    return out


def download_cifar10(data_dir: str) -> Path:
    """Download CIFAR-10 into ``data_dir`` with torchvision (needs internet)."""
    from torchvision.datasets import CIFAR10

    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        CIFAR10(str(root), train=train, download=True)
    return root / TORCHVISION_DIR


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


@lru_cache(maxsize=4)
def load_cifar10(data_dir: str = "") -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 (train, test) as uint8 arrays, decoded once per source file and cached on disk."""
    root = resolve_data_dir(data_dir)
    source = _find_source(root)
    if source is None:
        raise DataNotFoundError(
            f"no CIFAR-10 found under {root}: expected cifar10/{NPZ_NAME} (the offline copy, see "
            f"shared/assets/README.md) or {TORCHVISION_DIR}/ (torchvision layout). When online, "
            f"`clipfed download --data-dir {root}` fetches it with torchvision."
        )
    key = sha256_file(source) if source.is_file() else sha256_file(source / "test_batch")
    folder = cache_dir() / "cifar10" / key[:16]
    names = ("train_images", "train_labels", "test_images", "test_labels", "classes")
    if not all((folder / f"{n}.npy").exists() for n in names):
        arrays = _decode_npz(source) if source.is_file() else _read_torchvision(source)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            _atomic_save(folder / f"{name}.npy", arrays[name])
    loaded = {n: np.load(folder / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in names}
    classes = tuple(str(c) for c in loaded["classes"])
    train = ImageSet(loaded["train_images"], np.array(loaded["train_labels"]), classes)
    test = ImageSet(loaded["test_images"], np.array(loaded["test_labels"]), classes)
    return train, test
