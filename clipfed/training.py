"""Local SGD and batched evaluation on uint8 image arrays, with no DataLoader overhead.

A client's shard is a few thousand 32x32 images: converting it to one normalised float tensor
and slicing batches out of it is several times faster on a CPU than a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed.config import RunConfig

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    x = torch.tensor(np.asarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
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
        after_step: ``(model, step) -> None`` run after each optimiser step (step counts from 1),
            e.g. a projection of the parameters, under ``torch.no_grad``.
        after_training: ``(model) -> None`` run once after the last step, under ``torch.no_grad``.
    """

    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    after_step: Callable[[nn.Module, int], None] | None = None
    after_training: Callable[[nn.Module], None] | None = None


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
) -> float:
    """SGD over ``epochs`` shuffled passes, stopped after ``max_steps`` steps when that is set (the
    field's "local iterations").

    Args:
        model: trained in place.
        images: uint8 (N, H, W, C); labels: int (N,).
        generator: the shuffling stream.
        hooks: per-step additions (an attack's training part); None: plain cross-entropy SGD.
    Returns:
        The mean training loss per sample (cross-entropy plus any extra term).
    """
    x, y = to_tensor(images), torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    total, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            if max_steps and steps == max_steps:
                break
            steps += 1
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x[batch])
            loss = F.cross_entropy(logits, y[batch])
            if hooks is not None and hooks.extra_loss is not None:
                loss = loss + hooks.extra_loss(model, x[batch], y[batch], logits)
            loss.backward()
            optimizer.step()
            if hooks is not None and hooks.after_step is not None:
                with torch.no_grad():
                    hooks.after_step(model, steps)
            total += loss.item() * len(batch)
            seen += len(batch)
        if max_steps and steps == max_steps:
            break
    if hooks is not None and hooks.after_training is not None:
        with torch.no_grad():
            hooks.after_training(model)
    return total / max(seen, 1)


class NonFiniteLogits(ArithmeticError):
    """A model gave NaN or Inf logits: their argmax is class 0 or an arbitrary class, not a prediction."""


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """The (N,) argmax class of (N, C) ``logits``; raises NonFiniteLogits if any logit is NaN or Inf."""
    if not torch.isfinite(logits).all():
        raise NonFiniteLogits(f"{int((~torch.isfinite(logits)).sum())} of {logits.numel()} logits are NaN or Inf")
    return logits.argmax(1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of every row of the already-normalised, non-empty tensor ``x``; raises
    NonFiniteLogits for a diverged model."""
    model.eval()
    return torch.cat([predictions(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per class; None for a class with no image (no accuracy, rather than a false 0.0)."""
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return [float(c / t) if t else None for c, t in zip(correct, total, strict=True)]
