"""The teacher interface CLIP-Fed relies on, and the spec that selects one from config."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

# A few of CLIP's CIFAR prompt templates (Radford et al. 2021); captions extend them.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
    "a close-up photo of a {}.",
)


class TeacherSpec(BaseModel):
    """Which teacher, resolved through the registry (config, not code, picks the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["reference", "openclip"] = "reference"
    # openclip
    model: str = "ViT-B-32"
    pretrained: str = Field("", description="open_clip pretrained tag (downloads when online)")
    checkpoint: str = Field("", description="local checkpoint file; overrides `pretrained`")
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    batch_size: int = Field(256, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # reference
    reference_model: str = "cnn"
    reference_epochs: int = Field(30, ge=1)
    reference_lr: float = Field(0.05, gt=0)
    reference_scale: float = Field(16.0, gt=0)

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Teacher(ABC):
    """A frozen model with image embeddings, class prototypes and zero-shot logits.

    Embeddings and prototypes are L2-normalised; ``zero_shot_logits`` is
    ``logit_scale * normalize(f_img(x)) @ T^T`` as in METHOD.md part 1.
    """

    backend: str
    is_reference: bool = False

    @property
    @abstractmethod
    def id(self) -> str:
        """A stable identifier: backend, model, weights and prompts."""

    @property
    @abstractmethod
    def embed_dim(self) -> int: ...

    @property
    @abstractmethod
    def logit_scale(self) -> float: ...

    @abstractmethod
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised (N, D) float32 embeddings."""

    @abstractmethod
    def caption_embeddings(self, captions: Sequence[str], class_index: int,
                           classes: Sequence[str]) -> torch.Tensor:
        """Normalised (len(captions), D) embeddings of captions written for ``class_index``."""

    @abstractmethod
    def class_prototypes(self, classes: Sequence[str],
                         captions: dict[int, list[str]] | None = None) -> torch.Tensor:
        """(C, D) normalised prototypes ``t_c`` (prompt templates, plus captions when given)."""

    @property
    def label(self) -> str:
        """How results made with this teacher must be labelled."""
        if self.is_reference:
            return f"{self.id} (reference stand-in: no real zero-shot knowledge)"
        return self.id

    def zero_shot_logits(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * embeddings @ prototypes.T


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
