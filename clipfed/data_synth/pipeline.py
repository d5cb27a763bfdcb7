"""``build_server_dataset``: captions -> images -> teacher labels/filter -> trigger augmentation
-> artifact, with per-stage timings. The artifact's id covers the recipe, the teacher's weights
and the input images, so the teacher is loaded (and digested) first; a finished artifact with the
same id is then a cache hit that makes no forward pass.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipfed.data import ImageSet, load_cifar10, public_pool_indices
from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.data_synth.artifact import (
    ServerDataset,
    artifact_name,
    data_digest,
    load_artifact,
    write_artifact,
)
from clipfed.data_synth.captions import build_captions
from clipfed.data_synth.config import SynthConfig
from clipfed.data_synth.frequency import AUGMENTATIONS, amplitude_spectrum, augment
from clipfed.data_synth.images import build_candidates, input_digest
from clipfed.devices import torch_threads
from clipfed.streams import Stream, stream_rng
from clipfed.teacher import Teacher, create_teacher, teacher_pool

STAGE_VERSIONS = {"captions": 1, "images": 1, "filter": 1, "augment": 1, "artifact": 1}


@dataclass(frozen=True)
class BuildResult:
    dataset: ServerDataset
    cache_hit: bool
    seconds: dict[str, float]


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[stage] = round(time.perf_counter() - start, 3)


def public_pool(cfg: SynthConfig) -> ImageSet:
    """The labelled public pool (only the reference teacher trains on its labels)."""
    train, _ = load_cifar10(cfg.data_dir)
    return train.subset(public_pool_indices(train.labels, cfg.seed, cfg.images.pool.public_pool_fraction))


def load_teacher(cfg: SynthConfig) -> Teacher:
    if cfg.teacher.backend != "reference":
        return create_teacher(cfg.teacher)
    train, _ = load_cifar10(cfg.data_dir)
    return create_teacher(cfg.teacher, teacher_pool(cfg.teacher, public_pool(cfg), train))


def select_confident(probs: torch.Tensor, intended: np.ndarray, cfg: SynthConfig,
                     rng: np.random.Generator) -> np.ndarray:
    """Indices the teacher agrees with (its top class, probability >= threshold), balanced."""
    top = probs.argmax(1).numpy()
    confidence = probs[torch.arange(len(intended)), torch.from_numpy(intended)].numpy()
    agreed = np.flatnonzero((top == intended) & (confidence >= cfg.filter.threshold))
    counts = np.bincount(intended[agreed], minlength=probs.shape[1])
    present = counts[counts > 0]
    cap = {"none": counts.max(initial=0), "median": int(np.median(present)) if present.size else 0,
           "min": present.min(initial=0)}[cfg.filter.balance]
    if cfg.filter.max_per_class:
        cap = min(cap, cfg.filter.max_per_class)
    kept = []
    for c in range(probs.shape[1]):
        members = agreed[intended[agreed] == c]
        kept.append(np.sort(rng.choice(members, size=min(cap, len(members)), replace=False)))
    return np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("numpy", "torch", "scipy", "open_clip_torch", "diffusers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_server_dataset(cfg: SynthConfig, out_root: Path, teacher: Teacher | None = None) -> BuildResult:
    """Build (or find) the artifact for ``cfg`` (with ``teacher``, else the one ``cfg`` names)
    under ``out_root``; a tampered artifact with the same id raises ArtifactIntegrityError.
    Runs with ``cfg.threads`` torch threads (reproducible floats for the reference teacher's
    training) and gives the caller back its own count."""
    with torch_threads(cfg.threads):
        return _build_server_dataset(cfg, out_root, teacher)


def _build_server_dataset(cfg: SynthConfig, out_root: Path, teacher: Teacher | None) -> BuildResult:
    seconds: dict[str, float] = {}
    with _timed(seconds, "teacher"):
        teacher = teacher or load_teacher(cfg)
    with _timed(seconds, "identify"):
        digests = {"teacher_weights": teacher.weights_digest, "inputs": input_digest(cfg)}
        content_hash = cfg.content_hash(**digests)
    existing = out_root / artifact_name(content_hash)
    if existing.exists():
        return BuildResult(load_artifact(existing), True, seconds)
    rng = stream_rng(cfg.seed, Stream.SYNTH_POOL)
    classes = list(CIFAR10_CLASSES)

    with _timed(seconds, "captions"):
        captions = build_captions(classes, cfg.captions, cfg.seed)
    with _timed(seconds, "images"):
        candidates = build_candidates(cfg, classes, captions, teacher)
    with _timed(seconds, "label_filter"):
        embeddings = candidates.embeddings if candidates.embeddings is not None \
            else teacher.encode_images(candidates.images)
        prototypes = teacher.class_prototypes(classes, captions)
        logits = teacher.zero_shot_logits(embeddings, prototypes)
        kept = select_confident(logits.softmax(1), candidates.intended, cfg, rng)
        if len(kept) == 0:
            raise ValueError(
                f"no candidate image passed the teacher filter (filter.threshold={cfg.filter.threshold}, "
                f"teacher {teacher.label}): lower the threshold or use a stronger teacher")
        clean_images, clean_labels = candidates.images[kept], candidates.intended[kept]
    with _timed(seconds, "augment"):
        spectrum = amplitude_spectrum(clean_images)
        aug_images, sources, codes = augment(clean_images, cfg.augment, spectrum, rng)
    with _timed(seconds, "teacher_augmented"):
        aug_embeddings = teacher.encode_images(aug_images) if len(aug_images) else embeddings[:0]
        aug_logits = teacher.zero_shot_logits(aug_embeddings, prototypes)

    arrays = {
        "images": np.concatenate([clean_images, aug_images]),
        "labels": np.concatenate([clean_labels, clean_labels[sources]]).astype(np.int64),
        "augmentation": np.concatenate([np.zeros(len(kept), np.int64), codes]),
        "source_index": np.concatenate([np.arange(len(kept)), sources]).astype(np.int64),
        "teacher_logits": torch.cat([logits[kept], aug_logits]).numpy().astype(np.float32),
        "teacher_embeddings": torch.cat([embeddings[kept], aug_embeddings]).numpy().astype(np.float32),
        "prototypes": prototypes.numpy().astype(np.float32),
        "spectrum_dct": spectrum.dct,
        "spectrum_fft": spectrum.fft,
    }
    manifest: dict[str, Any] = {
        "config": cfg.model_dump(mode="json", exclude={"data_dir"}),
        "recipe_hash": cfg.recipe_hash(),
        "input_digest": digests["inputs"],
        "data_digest": data_digest(arrays["images"], arrays["labels"]),
        "stage_versions": STAGE_VERSIONS,
        "library_versions": _versions(),
        "classes": classes,
        "augmentation_codes": list(AUGMENTATIONS),
        "teacher": {"id": teacher.id, "label": teacher.label, "is_reference": teacher.is_reference,
                    "is_random_init": teacher.is_random_init, "weights_digest": digests["teacher_weights"],
                    "logit_scale": teacher.logit_scale, "embed_dim": teacher.embed_dim},
        "sources": {"captions": f"{cfg.captions.backend} ({cfg.captions.per_class} per class)",
                    "images": candidates.source},
        "counts": {
            "candidates": len(candidates.intended),
            "clean_per_class": np.bincount(clean_labels, minlength=len(classes)).tolist(),
            "augmented_by_kind": {k: int((codes == i).sum()) for i, k in enumerate(AUGMENTATIONS) if i},
            "total": len(arrays["labels"]),
        },
        "captions": {classes[c]: caps for c, caps in captions.items()},
        "client_data_used": False,
    }
    with _timed(seconds, "write"):
        out_root.mkdir(parents=True, exist_ok=True)
        path = write_artifact(out_root, content_hash, arrays, manifest, seconds)
    (path / "build.json").write_text(json.dumps({"seconds": seconds}, indent=2) + "\n")
    return BuildResult(load_artifact(path), False, seconds)
