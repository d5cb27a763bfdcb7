"""The ``openclip`` teacher: any open_clip model by name, with a pretrained tag or a checkpoint.

Real use downloads weights by tag (``pretrained="laion2b_s34b_b79k"``); offline, ``pretrained=""``
gives a random-init model (no download; the tokenizer ships in the package) and ``checkpoint``
loads a local file through open_clip's own loader. CIFAR's 32px images go through the model's own
preprocessing config (bicubic resize to its input size, its mean/std), vectorised in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipfed.data import ImageSet
from clipfed.data.cifar import sha256_file
from clipfed.teacher.base import Teacher, TeacherSpec, normalize, resolve_device
from clipfed.teacher.registry import TEACHERS


class OpenClipTeacher(Teacher):
    backend = "openclip"

    def __init__(self, spec: TeacherSpec) -> None:
        import open_clip

        self.spec = spec
        self.device = resolve_device(spec.device)
        weights = spec.checkpoint or spec.pretrained or None
        if spec.checkpoint and not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(f"teacher checkpoint {spec.checkpoint} does not exist")
        self.model = open_clip.create_model(spec.model, pretrained=weights, device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        cfg = self.model.visual.preprocess_cfg
        size = self.model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1)
        weights_id = f"ckpt-{sha256_file(Path(spec.checkpoint))[:12]}" if spec.checkpoint else (spec.pretrained or "random-init")
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
        x = torch.tensor(np.asarray(images), device=self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0, 1)
        return (x - self.mean) / self.std

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


@TEACHERS.register("openclip", "any open_clip model: pretrained tag (online) or local checkpoint")
def openclip_teacher(spec: TeacherSpec, pool: ImageSet | None = None) -> Teacher:
    return OpenClipTeacher(spec)
