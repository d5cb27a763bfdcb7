"""Segmentation oracles for the teacher guard: which prompted labels can an image actually ground?

An oracle gets images and, per image, the labels a (possibly backdoored) teacher claims; it
returns, per label, a grounding score and the box of the region it found. Backends:

- ``clipseg``: CLIPSeg through ``transformers`` (text-prompted segmentation), from a model id
  (downloads when online, e.g. ``CIDAS/clipseg-rd64-refined``) or a local folder; tests load a
  random-init one offline.
- ``reference``: the offline stand-in. A *clean* reference classifier scores each label on a set
  of candidate boxes (the whole image and overlapping sub-windows, each resized to the input
  size); the label is grounded where its probability is highest. It needs no text and, like the
  reference teacher, is only a stand-in: results made with it say so.

``ORACLES`` maps a name to a factory returning an ``Oracle``; the factories take different
arguments (``clipseg``: a model id or folder; ``reference``: a classifier), so a caller knows which
one it builds (``clipfed.guard.policy``, ``clipfed.guard.cli``). A new oracle subclasses
``Oracle``, implements ``ground``, registers a factory with ``@ORACLES.register(name)`` (declared in
the catalogue below), and is added to ``RunConfig.teacher_guard_oracle`` and ``clipfed teacher
audit --oracle``; ``tests/test_every_teacher.py`` checks the ``ground`` contract for every
registered oracle. Sources: CLIPSeg is Lüddecke and Ecker, "Image Segmentation Using Text and
Image Prompts", CVPR 2022; the audit rule that uses the oracle is METHOD.md part 5.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from clipfed.devices import resolve_device
from clipfed.registry import Registry
from clipfed.training import to_tensor

Box = tuple[int, int, int, int]  # (top, left, bottom, right), pixel bounds, bottom/right exclusive

ORACLES: Registry[Callable[..., Oracle]] = Registry("oracle", {
    "clipseg": (__name__, "CLIPSeg via transformers: a model id (online) or a local folder"),
    "reference": (__name__, "offline stand-in: a clean reference classifier scanning boxes"),
})


@dataclass(frozen=True)
class Grounding:
    """How well an oracle grounds one prompted label in one image.

    Attributes:
        label: The prompted class index.
        score: In [0, 1]: the reference oracle's best softmax probability over its boxes (whole
            image included), CLIPSeg's mask peak (a sigmoid).
        box: The best region, ``(top, left, bottom, right)`` in pixels, bottom/right exclusive.
        regions: Every sub-region scored, with its score in [0, 1].
    """

    label: int
    score: float  # the oracle's confidence that the label is visibly present
    box: Box  # where it is (the best region), in image pixels
    regions: tuple[tuple[Box, float], ...] = ()  # every sub-region it scored, with its score


class Oracle(ABC):
    """What the teacher guard's audit asks of a segmentation oracle.

    Attributes:
        name: The registry name.
        is_stand_in: True for an oracle with no real grounding ability (the reference one).
    """

    name: str
    is_stand_in: bool = False

    @abstractmethod
    def ground(self, images: np.ndarray, prompts: Sequence[Sequence[int]],
               classes: Sequence[str]) -> list[list[Grounding]]:
        """For image i and each label in ``prompts[i]``: a score and a box.

        Args:
            images: uint8 RGB images (N, H, W, 3).
            prompts: N sequences of class indices to ground (the teacher's top-k labels).
            classes: The class names, in label order (text prompts are built from them).

        Returns:
            N lists; list i holds one ``Grounding`` per label of ``prompts[i]``, in that order,
            with its box inside the image.
        """


def crop_resize(images: torch.Tensor, boxes: Sequence[Box], size: int) -> torch.Tensor:
    """Each box of each image, resized to ``size`` x ``size``: (N * len(boxes), C, size, size)."""
    crops = [F.interpolate(images[:, :, top:bottom, left:right], size=(size, size), mode="bilinear",
                           align_corners=False)
             for top, left, bottom, right in boxes]
    return torch.stack(crops, dim=1).flatten(0, 1)


def candidate_boxes(height: int, width: int, window: float = 0.75, stride: float = 0.125) -> list[Box]:
    """The whole image and square windows of ``window`` of its side at ``stride`` steps."""
    side_h, side_w = round(height * window), round(width * window)
    step_h, step_w = max(1, round(height * stride)), max(1, round(width * stride))
    boxes: list[Box] = [(0, 0, height, width)]
    for top in range(0, height - side_h + 1, step_h):
        for left in range(0, width - side_w + 1, step_w):
            boxes.append((top, left, top + side_h, left + side_w))
    return boxes


class ReferenceOracle(Oracle):
    """A clean classifier scanning candidate boxes (the offline stand-in for a segmenter)."""

    name = "reference"
    is_stand_in = True

    def __init__(self, classify: Callable[[torch.Tensor], torch.Tensor], window: float = 0.75,
                 batch_size: int = 512) -> None:
        self.classify = classify  # float images (N, 3, H, W) -> logits (N, C)
        self.window = window
        self.batch_size = batch_size

    @torch.no_grad()
    def ground(self, images: np.ndarray, prompts: Sequence[Sequence[int]],
               classes: Sequence[str]) -> list[list[Grounding]]:
        x = to_tensor(np.asarray(images))
        boxes = candidate_boxes(x.shape[2], x.shape[3], self.window)
        probs = []
        for start in range(0, len(x), max(1, self.batch_size // len(boxes))):
            chunk = crop_resize(x[start:start + max(1, self.batch_size // len(boxes))], boxes, x.shape[2])
            probs.append(F.softmax(self.classify(chunk), dim=1).view(-1, len(boxes), len(classes)))
        scores = torch.cat(probs)  # (N, boxes, C)
        out = []
        for i, labels in enumerate(prompts):
            per_label = scores[i, :, list(labels)]  # (boxes, labels)
            best_window = per_label[1:].argmax(dim=0) + 1  # the object's region: a sub-window
            out.append([
                Grounding(int(label), float(per_label[:, j].max()), boxes[int(best_window[j])],
                          tuple((boxes[b], float(per_label[b, j])) for b in range(1, len(boxes))))
                for j, label in enumerate(labels)
            ])
        return out


class ClipSegOracle(Oracle):
    """CLIPSeg: one mask per (image, label prompt); the label is grounded where the mask is."""

    name = "clipseg"

    def __init__(self, model_id: str, device: str = "cpu", prompt: str = "a photo of a {}.") -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.device = resolve_device(device)
        self.processor = CLIPSegProcessor.from_pretrained(model_id)
        model = CLIPSegForImageSegmentation.from_pretrained(model_id)
        # transformers' ``to`` is ``functools.wraps(nn.Module.to)``, which typeshed types as unbound
        self.model = cast(torch.nn.Module, model).to(self.device).eval()
        self.prompt = prompt

    @torch.no_grad()
    def ground(self, images: np.ndarray, prompts: Sequence[Sequence[int]],
               classes: Sequence[str]) -> list[list[Grounding]]:
        out = []
        for image, labels in zip(images, prompts, strict=True):
            texts = [self.prompt.format(classes[label]) for label in labels]
            inputs = self.processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt")
            logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
            masks = torch.sigmoid(logits.reshape(len(texts), *logits.shape[-2:]))
            masks = F.interpolate(masks[:, None], size=image.shape[:2], mode="bilinear", align_corners=False)[:, 0]
            out.append([Grounding(int(label), float(mask.max()), mask_box(mask),
                                  ((mask_box(mask), float(mask.max())),))
                         for label, mask in zip(labels, masks, strict=True)])
        return out


def mask_box(mask: torch.Tensor, relative: float = 0.5) -> Box:
    """The bounding box of pixels above ``relative`` of the mask's peak."""
    ys, xs = torch.nonzero(mask >= mask.max() * relative, as_tuple=True)
    if len(ys) == 0:
        return (0, 0, mask.shape[0], mask.shape[1])
    return (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)


@ORACLES.register("clipseg")
def clipseg_oracle(model_id: str = "CIDAS/clipseg-rd64-refined", **kwargs: Any) -> Oracle:
    """A CLIPSeg oracle.

    Args:
        model_id: A Hugging Face model id (downloads when online) or a local folder saved with
            ``save_pretrained`` (model and processor).
        **kwargs: ``device`` (a run's ``device`` value, default ``"cpu"``; the ServerApp passes
            the run's) and ``prompt`` (default ``"a photo of a {}."``).

    Raises:
        OSError: ``transformers`` cannot load ``model_id`` (offline, or no such folder).
    """
    return ClipSegOracle(model_id, **kwargs)


@ORACLES.register("reference")
def reference_oracle(classify: Callable[[torch.Tensor], torch.Tensor], **kwargs: Any) -> Oracle:
    """The offline stand-in: ``classify`` scans candidate boxes.

    Args:
        classify: A clean classifier: CIFAR-normalised float32 images (N, 3, H, W), as
            ``clipfed.training.to_tensor`` makes them, -> logits (N, C) over the classes (a
            reference teacher's ``model``).
        **kwargs: ``window`` (a sub-window's side as a fraction of the image's, default 0.75)
            and ``batch_size`` (crops per forward pass, default 512).
    """
    return ReferenceOracle(classify, **kwargs)


def list_oracles() -> list[str]:
    """Every declared oracle name, sorted; imports nothing beyond this module."""
    return ORACLES.names()
