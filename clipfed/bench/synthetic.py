"""Stand-ins with the real shapes for benchmarks that time work, not results.

Speed does not depend on what an image shows or what an update learned, so the benchmarks time
the real code paths on random pixels, a random server dataset and noisy copies of a model:
nothing to download, no teacher to train, the same sizes on every machine. (tests/conftest.py and
tests/flower_mocks.py hold the test suite's own versions, which need learnable data.)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from clipfed.data.cifar import NPZ_NAME
from clipfed.data_synth.artifact import ServerDataset
from clipfed.data_synth.frequency import AUGMENTATIONS

NUM_CLASSES = 10
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NODE_OFFSET = 1000  # mock node ids are NODE_OFFSET + partition id


def random_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (count, 32, 32, 3) uniform noise: CIFAR's shape and dtype."""
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def jpeg_blob(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) images as the offline format's JPEG blob (quality 95) and its (N + 1,)
    int64 byte offsets (``clipfed.data.cifar`` decodes image i from blob[offsets[i]:offsets[i+1]])."""
    from PIL import Image

    chunks, offsets = [], [0]
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        chunks.append(buffer.getvalue())
        offsets.append(offsets[-1] + len(chunks[-1]))
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), np.asarray(offsets, dtype=np.int64)


def write_fake_cifar(root: Path, n_train: int, n_test: int = 10, seed: int = 0) -> Path:
    """A CIFAR-10 npz in the offline format (``clipfed.data.cifar``: JPEG blobs plus exact-pixel
    rows) holding random images with labels cycling through the classes; returns ``root``, a
    ``data-dir`` the ClientApp loads as it loads the real one."""

    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {"classes": np.asarray(CLASSES)}  # Any: numpy types savez's **kwds as bool
    for split, count in (("train", n_train), ("test", n_test)):
        arrays[f"{split}_labels"] = (np.arange(count) % NUM_CLASSES).astype(np.uint8)
        arrays[f"{split}_jpeg_blob"], arrays[f"{split}_jpeg_offsets"] = jpeg_blob(random_images(count, rng))
        arrays[f"{split}_exact_idx"] = np.zeros(0, dtype=np.int32)
        arrays[f"{split}_exact_pixels"] = np.zeros((0, 3 * 32 * 32), dtype=np.uint8)
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    np.savez(root / "cifar10" / NPZ_NAME, **arrays)
    return root


def synthetic_server_dataset(clean_per_class: int, copies: int = 2, embed_dim: int = 512,
                             seed: int = 0) -> ServerDataset:
    """A server dataset of random content with the artifact's arrays, dtypes and proportions:
    ``clean_per_class`` clean images per class and ``copies`` trigger-like copies of each (the
    synthesis default: 2), random teacher logits, unit-norm embeddings and prototypes of
    ``embed_dim`` (512: an OpenCLIP ViT-B/32 teacher). The README's measured artifact has 4,639
    clean images (464 a class) and 9,278 copies."""
    rng = np.random.default_rng(seed)
    clean_labels = np.repeat(np.arange(NUM_CLASSES), clean_per_class)
    n_clean = len(clean_labels)
    sources = np.repeat(np.arange(n_clean), copies)
    labels = np.concatenate([clean_labels, clean_labels[sources]]).astype(np.int64)
    n = len(labels)

    def unit_rows(rows: int) -> np.ndarray:
        vectors = rng.normal(size=(rows, embed_dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    arrays = {
        "images": random_images(n, rng),
        "labels": labels,
        "augmentation": np.concatenate([np.zeros(n_clean, np.int64),
                                        rng.integers(1, len(AUGMENTATIONS), size=len(sources))]),
        "source_index": np.concatenate([np.arange(n_clean), sources]).astype(np.int64),
        "teacher_logits": rng.normal(size=(n, NUM_CLASSES)).astype(np.float32),
        "teacher_embeddings": unit_rows(n),
        "prototypes": unit_rows(NUM_CLASSES),
    }
    manifest = {"teacher": {"id": "synthetic", "label": "synthetic (random outputs, for timing only)"},
                "classes": list(CLASSES)}
    return ServerDataset(Path("synthetic"), manifest, arrays)


def mock_train_replies(global_state: dict[str, np.ndarray], count: int,
                       rng: np.random.Generator) -> list[Message]:
    """``count`` TRAIN replies, partition p from node ``NODE_OFFSET + p``: the global model plus
    Gaussian noise (std 0.01) in every floating-point array, integers (BatchNorm's counters)
    unchanged, 100 examples each, benign. Building Messages needs a server identity
    (``flower_internals.server_identity``)."""
    replies = []
    for pid in range(count):
        arrays = ArrayRecord({k: Array((v + rng.normal(0, 0.01, v.shape)).astype(v.dtype)) if v.dtype.kind == "f"
                              else Array(v) for k, v in global_state.items()})
        metrics = MetricRecord({"num-examples": 100, "train-loss": 1.0, "partition-id": pid, "is-malicious": 0})
        instruction = Message(RecordDict(), dst_node_id=NODE_OFFSET + pid, message_type=MessageType.TRAIN)
        replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=instruction))
    return replies
