"""Stage 5: the server dataset as a versioned, hash-addressed, verifiable artifact.

A folder ``synth-<hash16>`` holding ``.npy`` arrays and ``manifest.json`` (config, stage
versions, sources, counts, class names, the sha256 of every file). The id hashes the recipe, the
teacher's weights and the input images; on one machine the same id gives byte-identical files.
Across machines the floats of the teacher's forward passes may differ, so the manifest also holds
``data_digest``, the digest of the images and labels themselves. ``load_artifact`` re-hashes
every file and refuses a tampered one. Build timings are not content: they go to ``build.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipfed.data.cifar import sha256_file
from clipfed.data_synth.config import PIPELINE_VERSION
from clipfed.data_synth.frequency import AUGMENTATIONS

MANIFEST = "manifest.json"
ARRAYS = ("images", "labels", "augmentation", "source_index", "teacher_logits",
          "teacher_embeddings", "prototypes", "spectrum_dct", "spectrum_fft")


class ArtifactIntegrityError(ValueError):
    """A file of the artifact is missing or does not match the manifest's sha256."""


@dataclass(frozen=True)
class ServerDataset:
    """The loaded artifact: arrays by name plus the manifest."""

    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def images(self) -> np.ndarray:
        return self.arrays["images"]

    @property
    def labels(self) -> np.ndarray:
        return self.arrays["labels"]

    @property
    def augmentation(self) -> np.ndarray:
        return self.arrays["augmentation"]

    @property
    def clean(self) -> np.ndarray:
        """Boolean mask of the un-augmented images."""
        return self.augmentation == AUGMENTATIONS.index("clean")

    @property
    def teacher_id(self) -> str:
        return str(self.manifest["teacher"]["id"])


def data_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the server dataset's content proper, the images and their labels (shapes,
    dtypes and bytes): two builds hold the same data exactly when their digests agree."""
    digest = hashlib.sha256()
    for array in (images, labels):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def artifact_name(content_hash: str) -> str:
    return f"synth-{content_hash[:16]}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_artifact(root: Path, content_hash: str, arrays: dict[str, np.ndarray],
                   manifest: dict[str, Any], timings: dict[str, float]) -> Path:
    """Write into a temp folder, then rename: a half-written artifact never looks finished."""
    final = root / artifact_name(content_hash)
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for name in ARRAYS:
        (tmp / f"{name}.npy").write_bytes(_npy_bytes(arrays[name]))
        files[f"{name}.npy"] = sha256_file(tmp / f"{name}.npy")
    full = {**manifest, "pipeline_version": PIPELINE_VERSION, "content_hash": content_hash, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    (tmp / "build.json").write_text(json.dumps({"seconds": timings}, indent=2) + "\n")
    if final.exists():  # another builder finished first: keep its (identical) copy
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    return final


def verify_artifact(path: Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's sha256."""
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise ArtifactIntegrityError(f"{path}: no {MANIFEST}; not a finished artifact")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.exists():
            raise ArtifactIntegrityError(f"{path}: {name} is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{path}: {name} has sha256 {actual[:16]}..., the manifest says {expected[:16]}...; "
                "the artifact was modified or corrupted: delete it and rebuild")
    return manifest


def load_artifact(path: Path) -> ServerDataset:
    manifest = verify_artifact(path)
    arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in ARRAYS}
    return ServerDataset(path, manifest, arrays)


def pack_artifact(path: Path) -> bytes:
    """The artifact folder as a .tar.gz (what the service serves)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for file in sorted(path.iterdir()):
            tar.add(file, arcname=f"{path.name}/{file.name}")
    return buffer.getvalue()


def unpack_artifact(blob: bytes, root: Path, content_hash: str) -> Path:
    """Extract a downloaded .tar.gz into ``root`` and verify it before it counts as cached."""
    name = artifact_name(content_hash)
    tmp = root / f".{name}.download.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(tmp, filter="data")
    extracted = tmp / name
    manifest = verify_artifact(extracted)
    if manifest["content_hash"] != content_hash:
        raise ArtifactIntegrityError(f"downloaded artifact is {manifest['content_hash'][:16]}, asked for "
                                     f"{content_hash[:16]}")
    final = root / name
    if not final.exists():
        os.replace(extracted, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final
