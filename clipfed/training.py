"""Local SGD and batched evaluation on uint8 image arrays, with no DataLoader overhead.

A client's shard is a few thousand 32x32 images: converting it to one normalised float tensor
and slicing batches out of it is several times faster on a CPU than a DataLoader.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
) -> float:
    """Plain SGD over ``epochs`` shuffled passes, stopped after ``max_steps`` steps when that is
    set (the field's "local iterations"); returns the mean training loss."""
    x, y = to_tensor(images), torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    total, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            if max_steps and steps == max_steps:
                return total / max(seen, 1)
            steps += 1
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
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
