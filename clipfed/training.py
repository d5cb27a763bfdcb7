"""Local SGD and batched evaluation on uint8 image arrays, with no DataLoader overhead.

A client's shard is a few thousand 32x32 images: converting it to one normalised float tensor
on the training device, once, and slicing batches out of it is several times faster than a
DataLoader (on a GPU it also avoids a host-to-device copy per batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed import devices
from clipfed.config import INFERENCE_BATCH, RunConfig

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def to_tensor(images: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W) on ``device`` (None: the CPU).

    The uint8 pixels are copied to the device and normalised there, so a quarter of the bytes
    of a float copy cross the bus (CUDA may divide by a reciprocal: the last bit can differ).
    """
    x = torch.tensor(np.asarray(images), device=device).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def from_tensor(x: torch.Tensor) -> np.ndarray:
    """The inverse of ``to_tensor``: normalised (N, C, H, W) -> uint8 (N, H, W, C)."""
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    pixels = (x.detach().cpu() * std + mean).mul_(255.0).round_().clamp_(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass(frozen=True)
class LocalSchedule:
    """How many SGD steps local training takes and with which optimiser settings.

    Attributes:
        epochs: shuffled passes over the (poisoned) shard.
        max_steps: cap on SGD steps (0: whole epochs), the field's "local iterations".
        lr, momentum, weight_decay: torch.optim.SGD's settings.
    """

    epochs: int
    max_steps: int
    lr: float
    momentum: float
    weight_decay: float

    @classmethod
    def benign(cls, cfg: RunConfig) -> LocalSchedule:
        """The schedule every honest client follows (``local-epochs``, ``local-steps``, ``lr``...)."""
        return cls(cfg.local_epochs, cfg.local_steps, cfg.lr, cfg.momentum, cfg.weight_decay)


@dataclass(frozen=True)
class StepHooks:
    """Per-step additions to local training (``training.train_local``'s ``hooks``).

    Attributes:
        extra_loss: ``(model, x, y, logits) -> scalar tensor`` added to the cross-entropy of each
            batch (x: normalised float (B, C, H, W), y: int64 (B,), logits: (B, classes)).
        before_step: ``(model, step) -> None`` run between ``backward`` and the optimiser step,
            e.g. masking the gradients (``p.grad``) to the coordinates an attack may change.
        after_step: ``(model, step) -> None`` run after each optimiser step (step counts from 1),
            e.g. a projection of the parameters, under ``torch.no_grad``.
        after_training: ``(model) -> None`` run once after the last step, under ``torch.no_grad``.
    """

    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    before_step: Callable[[nn.Module, int], None] | None = None
    after_step: Callable[[nn.Module, int], None] | None = None
    after_training: Callable[[nn.Module], None] | None = None


CROP_PADDING = 4  # px on every side: the field's CIFAR crop (He et al. 2016)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING,
                     fill: Literal["zero", "reflect"] = "zero") -> torch.Tensor:
    """The standard CIFAR augmentation of a batch, per image: a random H x W crop of the image
    padded by ``padding`` px on every side, then a horizontal flip with probability 1/2.

    ``fill="zero"`` (local training's ``augment``) pads zeros in the normalised space, i.e. the
    CIFAR mean colour (torchvision's ``RandomCrop(32, padding=4)`` before ``Normalize`` pads
    black instead); ``"reflect"`` mirrors the border (the reference teacher's recipe). An output
    pixel (i, j) is input pixel (i + dy - padding, j' + dx - padding), j' = W-1-j when flipped
    else j, with dy, dx uniform in [0, 2 * padding]: content moves by at most ``padding`` px per
    axis.

    What it does to a corner patch trigger (BadNets stamps it ``MARGIN`` = 1 px from the border):
    the patch moves with the image by up to 4 px in each axis, so a move towards its corner cuts
    up to 3 of its rows and 3 of its columns off, and the flip mirrors it (pattern and all) to
    the other side. The model learns the trigger at any of these shifts (and mirrored); the
    unshifted test-time trigger is one of them.

    Args:
        x: normalised float (B, C, H, W), on any device.
        generator: a CPU generator (the training stream). It gives dy (B,), then dx (B,), then
            the flips (B,), drawn on the CPU and copied to ``x``'s device, so a seed gives the
            same crops on every device.
        padding: px added on every side before cropping (< H and W for ``reflect``).
        fill: what the padding holds.
    Returns:
        (B, C, H, W), a new tensor on ``x``'s device, gathered in one indexing op (no loop).
    """
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    mode = "constant" if fill == "zero" else "reflect"
    padded = F.pad(x, (padding, padding, padding, padding), mode=mode)  # (B, C, H + 2p, W + 2p)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H): rows of ``padded``
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W): columns of ``padded``
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def train_local(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    max_steps: int = 0,
    hooks: StepHooks | None = None,
    device: torch.device | None = None,
    amp: bool = False,
    augment: bool = False,
) -> float:
    """SGD over ``epochs`` shuffled passes, stopped after ``max_steps`` steps when that is set (the
    field's "local iterations").

    The shard goes to ``device`` once, as one tensor; batches are sliced there. On the CPU
    ``amp`` changes nothing, and ``augment=False`` draws no random number, so such a run is
    bit-identical whatever ``amp`` says (tests/test_pinned_behaviour.py pins its MA/ASR).

    Args:
        model: trained in place, on ``device`` (moved there, channels-last under ``amp`` on CUDA:
            cuDNN then runs its convolutions channels-last whatever the input's layout).
        images: uint8 (N, H, W, C); labels: int (N,), both already poisoned by an attacker.
        generator: a CPU generator: the shuffling stream, and the augmentation's when ``augment``.
        hooks: per-step additions (an attack's training part); None: plain cross-entropy SGD.
            They see tensors on ``device`` (the batch after augmentation).
        device: where to train; None: where the model's parameters are.
        amp: bf16 autocast and channels-last on CUDA (``devices.amp_active``); nothing on the CPU.
        augment: ``random_crop_flip`` on every batch, after poisoning, clean and poisoned
            images alike.
    Returns:
        The mean training loss per sample (cross-entropy plus any extra term).
    """
    device = device if device is not None else next(model.parameters()).device
    devices.place(model, device, amp)
    x = to_tensor(images, device)  # (N, C, H, W), once per call: no per-batch host-to-device copy
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    # float64 on the device: the same sum as Python floats over loss.item(), without a sync per step
    total, seen, steps = torch.zeros((), dtype=torch.float64, device=device), 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        for start in range(0, len(y), batch_size):
            if max_steps and steps == max_steps:
                break
            steps += 1
            batch = order[start : start + batch_size]
            xb, yb = x[batch], y[batch]
            if augment:
                xb = random_crop_flip(xb, generator)
            optimizer.zero_grad(set_to_none=True)
            with devices.autocast(device, amp):
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if hooks is not None and hooks.extra_loss is not None:
                    loss = loss + hooks.extra_loss(model, xb, yb, logits)
            loss.backward()
            if hooks is not None and hooks.before_step is not None:
                with torch.no_grad():
                    hooks.before_step(model, steps)
            optimizer.step()
            if hooks is not None and hooks.after_step is not None:
                with torch.no_grad():
                    hooks.after_step(model, steps)
            total += loss.detach().double() * len(batch)
            seen += len(batch)
        if max_steps and steps == max_steps:
            break
    if hooks is not None and hooks.after_training is not None:
        with torch.no_grad():
            hooks.after_training(model)
    return float(total) / max(seen, 1)


class NonFiniteLogits(ArithmeticError):
    """A model gave NaN or Inf logits: their argmax is class 0 or an arbitrary class, not a prediction."""


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """The (N,) argmax class of (N, C) ``logits``; raises NonFiniteLogits if any logit is NaN or Inf."""
    if not torch.isfinite(logits).all():
        raise NonFiniteLogits(f"{int((~torch.isfinite(logits)).sum())} of {logits.numel()} logits are NaN or Inf")
    return logits.argmax(1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Predicted class of every row of the already-normalised, non-empty tensor ``x`` (on the
    model's device; the (N,) result stays there); raises NonFiniteLogits for a diverged model.
    Logits are compared in float32 even under bf16 autocast."""
    model.eval()
    return torch.cat([predictions(model(x[i : i + batch_size]).float()) for i in range(0, len(x), batch_size)])


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per class; None for a class with no image (no accuracy, rather than a false 0.0)."""
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return [float(c / t) if t else None for c, t in zip(correct, total, strict=True)]
