"""The ``openclip`` teacher: any open_clip model by name, with a pretrained tag or a checkpoint.

Real use downloads weights by tag (``pretrained="laion2b_s34b_b79k"``); ``checkpoint`` loads a
local file through open_clip's own loader. ``hf-hub:ORG/REPO`` and ``local-dir:PATH`` models bring
their architecture and weights together (open_clip's schemas; a checkpoint, such as the teacher
guard's repair, is loaded over them). ``pretrained="random"`` gives a random-init model (no
download; seeded, so the same every time), only when asked for by name, and its label says it
has no knowledge. CIFAR's 32 px images go through open_clip's own eval transform for the model's
preprocess config (size, resize mode, interpolation, mean/std), run batched on tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clipfed.config import RANDOM_INIT, brings_own_weights
from clipfed.data import ImageSet
from clipfed.data.cifar import sha256_file
from clipfed.devices import resolve_device
from clipfed.teacher.base import (
    Teacher,
    TeacherSpec,
    normalize,
)
from clipfed.teacher.registry import TEACHERS

RANDOM_INIT_SEED = 0

if TYPE_CHECKING:
    from torch import nn

    class ClipModel(nn.Module):
        """What clipfed uses of open_clip's ``CLIP``/``CustomTextCLIP`` (open_clip ships no type hints)."""

        visual: nn.Module
        logit_scale: nn.Parameter

        def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

        def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


def preprocess_batch(x: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
    """open_clip's eval transform for ``cfg`` (a model's ``preprocess_cfg``), on a whole batch.

    ``x``: float (N, 3, H, W) in [0, 1]; returns (N, 3, *size) normalised. The steps and their
    parameters are those of ``open_clip.image_transform_v2(PreprocessCfg(**cfg), is_train=False)``
    (which works per PIL image), each applied to the tensor batch. Pixels are clamped and rounded
    to 1/255 where open_clip's PIL path turns uint8 into floats. An unknown step raises TypeError
    rather than being skipped."""
    import torchvision.transforms.functional as TF
    from open_clip.transform import (
        CenterCropOrPad,
        MaybeConvertMode,
        MaybeToTensor,
        PreprocessCfg,
        ResizeKeepRatio,
        center_crop_or_pad,
        image_transform_v2,
    )
    from torchvision.transforms import CenterCrop, Normalize, Resize

    known = {k: v for k, v in cfg.items() if k in PreprocessCfg.__dataclass_fields__}
    for step in image_transform_v2(PreprocessCfg(**known), is_train=False).transforms:
        if isinstance(step, (Resize, CenterCrop, Normalize)):  # torchvision: batched tensors as is
            x = step(x)
        elif isinstance(step, ResizeKeepRatio):  # reads a PIL-style (width, height) .size
            size = step.get_params(SimpleNamespace(size=(x.shape[-1], x.shape[-2])), step.size, step.longest)
            x = TF.resize(x, size, step.interpolation)
        elif isinstance(step, CenterCropOrPad):
            x = center_crop_or_pad(x, step.size, fill=step.fill / 255)
        elif isinstance(step, MaybeToTensor):  # PIL's images are uint8 up to here
            x = x.clamp(0, 1).mul(255).round().div(255)
        elif not isinstance(step, MaybeConvertMode):  # RGB already
            raise TypeError(f"open_clip eval transform step {step!r} has no batched equivalent here")
    return x


class OpenClipTeacher(Teacher):
    backend = "openclip"
    model: ClipModel

    def __init__(self, spec: TeacherSpec) -> None:
        import open_clip

        self.spec = spec
        self.device = resolve_device(spec.device)
        if spec.checkpoint and not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(f"teacher-checkpoint {spec.checkpoint} does not exist")
        # a checkpoint wins: model_copy (the teacher guard's repair) adds one without re-validating
        own_weights = brings_own_weights(spec.model)
        self.is_random_init = not own_weights and not spec.checkpoint and spec.pretrained == RANDOM_INIT
        if self.is_random_init:
            with torch.random.fork_rng(devices=[]):  # the same random weights every time
                torch.manual_seed(RANDOM_INIT_SEED)
                self.model = open_clip.create_model(spec.model, pretrained=None, device="cpu").to(self.device)
        elif own_weights and spec.checkpoint:  # open_clip ignores a `pretrained` path with a schema
            self.model = open_clip.create_model(spec.model, device=self.device, load_weights=False)
            open_clip.load_checkpoint(self.model, spec.checkpoint, device=self.device)
        elif own_weights:
            self.model = open_clip.create_model(spec.model, device=self.device, require_pretrained=True)
        else:  # TeacherSpec refuses neither pretrained nor checkpoint: never a silent random init
            self.model = open_clip.create_model(spec.model, pretrained=spec.checkpoint or spec.pretrained,
                                                device=self.device, require_pretrained=True)
        if self.is_random_init:
            weights_id = "random-init"
        elif spec.checkpoint:
            weights_id = f"ckpt-{sha256_file(Path(spec.checkpoint))[:12]}"
        else:  # a hub repository can change under its name: its weights' own digest
            weights_id = spec.pretrained or f"sha-{self.weights_digest[:12]}"
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self._id = f"openclip:{spec.model}:{weights_id}"
        self._dim = int(self.encode_texts(["a"]).shape[1])

    @property
    def id(self) -> str:
        return self._id

    @property
    def embed_dim(self) -> int:
        return self._dim

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100).item())

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> the model's input (N, 3, *size), as open_clip's own transform for
        the model's current preprocess config would make it."""
        import open_clip

        x = torch.tensor(np.asarray(images), device=self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return preprocess_batch(x, open_clip.get_model_preprocess_cfg(self.model))

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        out = [self.model.encode_image(self.preprocess(images[i : i + self.spec.batch_size]))
               for i in range(0, len(images), self.spec.batch_size)]
        return normalize(torch.cat(out)).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = [self.model.encode_text(self.tokenizer(list(texts[i : i + self.spec.batch_size])).to(self.device))
               for i in range(0, len(texts), self.spec.batch_size)]
        return normalize(torch.cat(out)).cpu()

    def caption_embeddings(self, captions: Sequence[str], class_index: int,
                           classes: Sequence[str]) -> torch.Tensor:
        return self.encode_texts(captions)

    def class_prototypes(self, classes: Sequence[str],
                         captions: dict[int, list[str]] | None = None) -> torch.Tensor:
        prototypes = []
        for index, name in enumerate(classes):
            texts = [t.format(name) for t in self.spec.templates] + list((captions or {}).get(index, []))
            prototypes.append(self.encode_texts(texts).mean(0))
        return normalize(torch.stack(prototypes))


@TEACHERS.register("openclip")
def openclip_teacher(spec: TeacherSpec, pool: ImageSet | None = None) -> Teacher:
    return OpenClipTeacher(spec)
