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

from clipfed.config import (
    DEVICE_PATTERN,
    RANDOM_INIT,
    RANDOM_INIT_NOTE,
    TEACHER_POOLS,
    TEACHERS,
    teacher_weights_problem,
)

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
    """Which teacher, resolved through the registry (config, not code, picks the model).

    Frozen and hashable into ``spec_hash``, which names the reference teacher's cache file and
    enters its id. Fields a backend does not use are ignored by it.

    Attributes:
        backend: A ``clipfed.teacher.registry.TEACHERS`` name; a new backend is added to
            ``clipfed.config.TEACHERS`` as well as to the catalogue.
        model: openclip: an open_clip model name (``open_clip.list_models()``), or
            ``hf-hub:ORG/REPO`` / ``local-dir:PATH``, which bring their own weights.
        pretrained: openclip: a pretrained tag, or ``"random"`` for deliberate random weights;
            empty with an ``hf-hub:``/``local-dir:`` model.
        checkpoint: A local weights file: open_clip's loader for ``openclip``; a state dict of
            the cosine classifier for ``reference``. It wins over ``pretrained``.
        templates: openclip: prompt templates with one ``{}`` for the class name; a class's
            prototype averages their embeddings (and its captions').
        batch_size: Images or texts per forward pass.
        device: openclip: where the model runs (``auto``, ``cpu``, ``cuda``, ``cuda:N``, as the
            run's ``device``, which a run's default recipe passes on); outputs always come back on
            the CPU. The reference teacher always runs on the CPU. Part of ``spec_hash`` (and so
            of the server dataset's id): floats computed elsewhere may differ in the last bits.
        reference_model: reference: the registry model (``clipfed.models``) used as backbone.
        reference_epochs: reference: SGD epochs over its pool; None: ``epochs`` decides by the pool.
        reference_lr: reference: initial SGD learning rate (cosine-decayed to 0).
        reference_scale: reference: the fixed logit scale (cosine similarity multiplier).
        reference_pool: reference: what it trains on, ``public`` (the public pool: a weak teacher)
            or ``train-split`` (the whole clean train split: a strong one that has seen images
            like the clients', which a real CLIP has not); ``teacher_pool`` gives the images.

    Raises:
        ValueError: (pydantic's ``ValidationError``) at construction, for an openclip spec that
            names no weights, both ``"random"`` and a checkpoint, or a tag beside an
            ``hf-hub:``/``local-dir:`` model (``teacher_weights_problem``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal[TEACHERS] = "reference"  # type: ignore[valid-type]
    # openclip
    model: str = "ViT-B-32"
    pretrained: str = Field("", description=f"open_clip pretrained tag (downloads when online); "
                            f"'{RANDOM_INIT}': random weights, deliberately (no knowledge)")
    checkpoint: str = Field("", description="local checkpoint file; overrides a pretrained tag")
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    batch_size: int = Field(256, ge=1)
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    # reference
    reference_model: str = "cnn"
    reference_epochs: int | None = Field(None, ge=1)
    reference_lr: float = Field(0.05, gt=0)
    reference_scale: float = Field(16.0, gt=0)
    reference_pool: Literal[TEACHER_POOLS] = "public"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _openclip_weights_named(self) -> TeacherSpec:
        """An openclip teacher without named weights would be a silent random init: refused."""
        problem = teacher_weights_problem(self.backend, self.model, self.pretrained, self.checkpoint)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def epochs(self) -> int:
        """The reference teacher's SGD epochs: ``reference_epochs``, else 30 over the public pool
        (5,000 images by default) and 10 over the train split (45,000): 3x the weak teacher's steps,
        enough for the CNN to approach its ceiling, while 30 would take an hour on 2 CPU cores."""
        if self.reference_epochs is not None:
            return self.reference_epochs
        return 10 if self.reference_pool == "train-split" else 30

    def spec_hash(self) -> str:
        """The first 16 hex digits of the sha256 of every field not at its default, as sorted JSON
        (a field added later leaves earlier specs' hashes, cache files and ids as they were)."""
        dump = self.model_dump(mode="json", exclude_defaults=True)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


class Teacher(ABC):
    """A frozen model with image embeddings, class prototypes and zero-shot logits.

    Embeddings and prototypes are L2-normalised; ``zero_shot_logits`` is
    ``logit_scale * normalize(f_img(x)) @ T^T`` as in METHOD.md part 1.

    A new backend subclasses this and provides, besides a factory registered in
    ``clipfed.teacher.registry``:

    - ``backend``: a class attribute, its registry name;
    - ``model``: the ``nn.Module`` holding every weight, in eval mode (``weights_digest``
      hashes its state dict into the server-dataset artifact);
    - the abstract ``id``, ``embed_dim``, ``logit_scale``, ``encode_images``,
      ``caption_embeddings`` and ``class_prototypes`` below;
    - ``is_reference`` / ``is_random_init`` set to True when it has no real zero-shot knowledge,
      so that ``label`` says so.

    Every tensor it returns is float32, on the CPU, without grad, and the same for the same
    input (``tests/test_every_teacher.py`` checks this for every registered backend). The
    teacher guard's repair (``clipfed.guard.policy.repaired_state``) only knows the reference
    and openclip teachers; it raises ``TypeError`` for any other.

    Attributes:
        backend: The registry name (``"openclip"``, ``"reference"``).
        is_reference: True for the offline stand-in (no zero-shot knowledge).
        is_random_init: True for deliberately random weights (no knowledge).
        model: The frozen network.
    """

    backend: str
    is_reference: bool = False
    is_random_init: bool = False
    model: nn.Module

    @property
    @abstractmethod
    def id(self) -> str:
        """A stable identifier, ``"<backend>:<model>:<weights>..."``, recorded with every result
        made with the teacher: it changes whenever the weights do. (The openclip id does not
        include the prompt templates; the reference id includes the whole spec's hash.)"""

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """D, the width of every embedding and prototype."""

    @cached_property
    def weights_digest(self) -> str:
        """sha256 of the model's weights (a teacher is frozen, so computed once)."""
        return state_digest(self.model)

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The positive multiplier of cosine similarities in ``zero_shot_logits`` (CLIP's learned
        temperature, exp(logit_scale) capped at 100, for open_clip; a fixed scale for the
        reference teacher)."""

    @abstractmethod
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """Image embeddings, one per image.

        Args:
            images: uint8 RGB images (N, H, W, 3), N >= 1, pixels 0..255 (CIFAR's 32 x 32 here;
                open_clip resizes them to its input size, the reference teacher needs the size
                its backbone was built for).

        Returns:
            Float32 (N, D) on the CPU, each row L2-normalised (unit norm).
        """

    @abstractmethod
    def caption_embeddings(self, captions: Sequence[str], class_index: int,
                           classes: Sequence[str]) -> torch.Tensor:
        """Embeddings of captions written for one class.

        Args:
            captions: K >= 1 texts.
            class_index: The class they describe, an index into ``classes`` (a teacher that
                cannot read text, the reference one, returns that class's prototype K times).
            classes: The class names, in label order.

        Returns:
            Float32 (K, D) on the CPU, each row L2-normalised.
        """

    @abstractmethod
    def class_prototypes(self, classes: Sequence[str],
                         captions: dict[int, list[str]] | None = None) -> torch.Tensor:
        """The class prototypes ``t_c``: one text embedding per class.

        Args:
            classes: The C class names, in label order (the reference teacher returns its own C
                trained class weights, so C must be the number of classes it was trained on).
            captions: Optional extra texts per class index; openclip averages their embeddings
                with the prompt templates', the reference teacher ignores them.

        Returns:
            Float32 (C, D) on the CPU, each row L2-normalised.
        """

    @property
    def label(self) -> str:
        """How results made with this teacher must be labelled."""
        if self.is_reference:
            return f"{self.id} (reference stand-in: no real zero-shot knowledge)"
        if self.is_random_init:
            return f"{self.id} ({RANDOM_INIT_NOTE})"
        return self.id

    def zero_shot_logits(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """``logit_scale * embeddings @ prototypes.T``: scaled cosine similarities, in
        [-logit_scale, logit_scale]; a softmax over classes gives the teacher's probabilities.

        Args:
            embeddings: (N, D) from ``encode_images``.
            prototypes: (C, D) from ``class_prototypes``.

        Returns:
            Float32 (N, C) logits.
        """
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
    """``x`` as float32 with every row along the last dimension scaled to unit L2 norm."""
    return F.normalize(x.float(), dim=-1)
