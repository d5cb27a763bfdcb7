"""The ``reference`` teacher: an offline stand-in for CLIP where no pretrained weights exist.

A cosine classifier (a registry model's features, L2-normalised, against L2-normalised class
weights, times a fixed scale) trained on the server's public pool, which no client holds (or, as
the strong stand-in, ``reference_pool='train-split'``, on the whole clean train split). Its
normalised class weights play the text prototypes, so ``zero_shot_logits`` are exactly its own
logits. It cannot read text: a caption's embedding is its class's prototype. It is trained once
per (pool, spec) and cached. Every result made with it is labelled as a reference-teacher result.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed.data import ImageSet
from clipfed.data.cifar import cache_dir, sha256_file
from clipfed.models import ClassifierNet, create_model
from clipfed.teacher.base import Teacher, TeacherSpec, normalize
from clipfed.teacher.registry import TEACHERS
from clipfed.training import random_crop_flip, to_tensor


class CosineClassifier(nn.Module):
    """``scale * normalize(features) @ normalize(W)^T``: logits that are cosine similarities."""

    def __init__(self, backbone: ClassifierNet, num_classes: int, scale: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.weight = nn.Parameter(torch.randn(num_classes, backbone.feature_dim) * 0.01)
        self.scale = scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.backbone.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.embed(x) @ normalize(self.weight).T


def _new_model(spec: TeacherSpec, num_classes: int) -> CosineClassifier:
    return CosineClassifier(create_model(spec.reference_model, num_classes), num_classes, spec.reference_scale)


def train_reference(pool: ImageSet, spec: TeacherSpec, seed: int = 0) -> CosineClassifier:
    """SGD with cosine learning-rate decay and crop/flip augmentation on the public pool."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _new_model(spec, len(pool.classes))
    x = to_tensor(np.asarray(pool.images))
    y = torch.from_numpy(np.asarray(pool.labels, dtype=np.int64))
    batch = 64
    steps = spec.epochs * ((len(y) + batch - 1) // batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.reference_lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(spec.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(model(random_crop_flip(x[idx], generator, fill="reflect")), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def pool_digest(pool: ImageSet) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(pool.images).tobytes())
    digest.update(np.asarray(pool.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


class ReferenceTeacher(Teacher):
    backend = "reference"
    is_reference = True
    model: CosineClassifier

    def __init__(self, model: CosineClassifier, source: str, spec: TeacherSpec) -> None:
        """``source``: what the weights came from, ``pool-<digest>`` or ``ckpt-<sha256>``."""
        self.model = model.eval()
        self.spec = spec
        self._id = f"reference:{spec.reference_model}:{source}:spec-{spec.spec_hash()}"

    @property
    def id(self) -> str:
        return self._id

    @property
    def embed_dim(self) -> int:
        return int(self.model.weight.shape[1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.scale)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        size = self.spec.batch_size
        return torch.cat([self.model.embed(to_tensor(images[i : i + size]))
                          for i in range(0, len(images), size)])

    def class_prototypes(self, classes: Sequence[str],
                         captions: dict[int, list[str]] | None = None) -> torch.Tensor:
        return normalize(self.model.weight.detach())

    def caption_embeddings(self, captions: Sequence[str], class_index: int,
                           classes: Sequence[str]) -> torch.Tensor:
        """It cannot read text: every caption of class c embeds as prototype c."""
        return self.class_prototypes(classes)[class_index].expand(len(captions), -1)


def _save_state(model: nn.Module, path: Path) -> Path:
    """Atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def _cache_path(spec: TeacherSpec, digest: str, name: str) -> Path:
    return cache_dir() / "teachers" / f"{name}-{digest}-{spec.spec_hash()}.pt"


def reference_checkpoint_path(spec: TeacherSpec, pool: ImageSet, name: str = "reference") -> Path:
    return _cache_path(spec, pool_digest(pool), name)


def load_or_train_reference(spec: TeacherSpec, pool: ImageSet, name: str = "reference",
                            source: str = "pool") -> ReferenceTeacher:
    """Train once per (pool, spec) and cache the weights; later calls load them. ``name`` and
    ``source`` say what the pool is in the cache file's name and the teacher id (e.g. a
    deliberately poisoned pool)."""
    digest = pool_digest(pool)
    path = _cache_path(spec, digest, name)
    if path.exists():
        model = _new_model(spec, len(pool.classes))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        model = train_reference(pool, spec)
        _save_state(model, path)
    return ReferenceTeacher(model, f"{source}-{digest}", spec)


def load_reference_checkpoint(spec: TeacherSpec, num_classes: int) -> ReferenceTeacher:
    """A reference teacher from a file (e.g. one ``clipfed teacher repair`` wrote)."""
    path = Path(spec.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
    model = _new_model(spec, num_classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return ReferenceTeacher(model, f"ckpt-{sha256_file(path)[:12]}", spec)


def save_reference_checkpoint(teacher: ReferenceTeacher, path: Path) -> Path:
    return _save_state(teacher.model, path)


@TEACHERS.register("reference")
def reference_teacher(spec: TeacherSpec, pool: ImageSet | None = None) -> Teacher:
    if spec.checkpoint:
        return load_reference_checkpoint(spec, len(pool.classes) if pool is not None else 10)
    if pool is None:
        raise ValueError("the reference teacher is trained on the public pool; pass pool=")
    if spec.reference_pool == "train-split":
        return load_or_train_reference(spec, pool, name="reference-train-split", source="train-split")
    return load_or_train_reference(spec, pool)

