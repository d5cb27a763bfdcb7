"""The teacher interface CLIP-Fed relies on, and the spec that selects one from config."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

# A few of CLIP's CIFAR prompt templates (Radford et al. 2021); captions extend them.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
    "a close-up photo of a {}.",
)
# The ``pretrained`` value that asks for an openclip teacher with random weights, on purpose.
RANDOM_INIT = "random"
RANDOM_INIT_NOTE = "RANDOM INIT (no knowledge)"


def teacher_weights_problem(backend: str, pretrained: str, checkpoint: str) -> str | None:
    """Why these teacher keys cannot be used, or None. An openclip teacher must name its weights:
    without them open_clip builds a random-init model whose results would look like real ones."""
    if backend != "openclip":
        return None
    if not pretrained and not checkpoint:
        return ("teacher='openclip' needs its weights: set teacher-pretrained (teacher.pretrained in a "
                "synth config) to an open_clip tag such as 'laion2b_s34b_b79k', or teacher-checkpoint "
                f"(teacher.checkpoint) to a local weights file; teacher-pretrained='{RANDOM_INIT}' gives "
                f"random weights on purpose, and every output then says {RANDOM_INIT_NOTE}")
    if pretrained == RANDOM_INIT and checkpoint:
        return (f"teacher-pretrained='{RANDOM_INIT}' and teacher-checkpoint={checkpoint!r} contradict each "
                "other: give one")
    return None


class TeacherSpec(BaseModel):
    """Which teacher, resolved through the registry (config, not code, picks the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["reference", "openclip"] = "reference"
    # openclip
    model: str = "ViT-B-32"
    pretrained: str = Field("", description=f"open_clip pretrained tag (downloads when online); "
                            f"'{RANDOM_INIT}': random weights, deliberately (no knowledge)")
    checkpoint: str = Field("", description="local checkpoint file; overrides a pretrained tag")
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    batch_size: int = Field(256, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # reference
    reference_model: str = "cnn"
    reference_epochs: int = Field(30, ge=1)
    reference_lr: float = Field(0.05, gt=0)
    reference_scale: float = Field(16.0, gt=0)

    @model_validator(mode="after")
    def _openclip_weights_named(self) -> TeacherSpec:
        """An openclip teacher without named weights would be a silent random init: refused."""
        problem = teacher_weights_problem(self.backend, self.pretrained, self.checkpoint)
        if problem:
            raise ValueError(problem)
        return self

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
    is_random_init: bool = False
    model: nn.Module

    @property
    @abstractmethod
    def id(self) -> str:
        """A stable identifier: backend, model, weights and prompts."""

    @property
    @abstractmethod
    def embed_dim(self) -> int: ...

    @cached_property
    def weights_digest(self) -> str:
        """sha256 of the model's weights (a teacher is frozen, so computed once)."""
        return state_digest(self.model)

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
        if self.is_random_init:
            return f"{self.id} ({RANDOM_INIT_NOTE})"
        return self.id

    def zero_shot_logits(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * embeddings @ prototypes.T


def state_digest(model: nn.Module) -> str:
    """Hex sha256 of a module's state dict: names, dtypes, shapes and raw bytes, in name order.
    Unlike a checkpoint file's hash it does not depend on how (or whether) the weights were saved."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
