"""A patch trigger the attacker learns against the global model: what the A3FL and F3BA data parts share.

The patch is a ``size`` x ``size`` square at ``patch-position`` (1 px from the border, as BadNets')
that replaces the pixels under it, and it starts from BadNets' ``patch-pattern`` at that size. Each
attacked round the data part's ``prepare`` optimises it against the received global model, in the
normalised input space the model sees, and the node keeps it in ``ctx.memory`` across its rounds as
float pixels in [0, 1], so that steps smaller than one grey level add up over rounds. Poisoning stamps
the rounded uint8 pixels (images stay uint8 until training normalises them), and the optimisation is
clamped to the valid pixel range so that every value it reaches can be stamped.

Not a registered part: a helper module of ``a3fl`` and ``f3ba``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from clipfed.attacks.base import AttackContext, DataPoisoning
from clipfed.attacks.data.badnets import patch_origin, patch_pattern
from clipfed.training import CIFAR_MEAN, CIFAR_STD

if TYPE_CHECKING:
    from clipfed.config import RunConfig


def _mean_std(device: torch.device, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CIFAR normalisation's per-channel mean and std (pixels in [0, 1]), each viewed as
    ``shape`` on ``device``."""
    return (torch.tensor(CIFAR_MEAN, device=device).view(*shape),
            torch.tensor(CIFAR_STD, device=device).view(*shape))


def pixel_bounds(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised values of pixel 0 and pixel 1 per channel, each (1, C, 1, 1) on ``device``:
    the box a trigger in the normalised space must stay in to remain a stampable image."""
    mean, std = _mean_std(device, 1, 3, 1, 1)
    return (0.0 - mean) / std, (1.0 - mean) / std


class LearnedPatch(DataPoisoning):
    """A patch trigger whose pixels ``prepare`` learns; subclasses implement the optimisation.

    Args:
        cfg: the run config (``patch-position``, ``patch-pattern``, ``target-label``, ``poison-rate``).
        size: the patch's side, in pixels.

    Attributes:
        pattern: float32 (size, size, C) in [0, 1], the current trigger's pixels.
    """

    learns_trigger = True
    memory_key: ClassVar[str]  # where the node keeps its learned pattern (one key per data part)

    def __init__(self, cfg: RunConfig, size: int) -> None:
        super().__init__(cfg)
        self.size = size
        self.position = cfg.patch_position
        self.pattern = patch_pattern(cfg.patch_pattern, size).astype(np.float32) / 255.0

    def origin(self, height: int, width: int) -> tuple[int, int]:
        """Top-left corner (row, col) of the patch in an H x W image."""
        return patch_origin(self.position, self.size, height, width)

    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        out = images.copy()
        row, col = self.origin(images.shape[1], images.shape[2])
        pixels = np.clip(np.rint(self.pattern * 255.0), 0, 255).astype(np.uint8)
        out[:, row : row + self.size, col : col + self.size, :] = pixels
        return out

    def recall(self, memory: dict[str, np.ndarray]) -> None:
        """Continue from the pattern this node learned in its earlier rounds, if ``memory`` holds one."""
        remembered = memory.get(self.memory_key)
        if remembered is not None and remembered.shape == self.pattern.shape:
            self.pattern = remembered.astype(np.float32)

    def remember(self, ctx: AttackContext) -> None:
        """Keep the current pattern for this node's next round."""
        ctx.memory[self.memory_key] = self.pattern.copy()

    def mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, 1, H, W) float: 1 on the patch, 0 elsewhere."""
        mask = torch.zeros(1, 1, height, width, device=device)
        row, col = self.origin(height, width)
        mask[..., row : row + self.size, col : col + self.size] = 1.0
        return mask

    def to_normalised(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The pattern as a (1, C, H, W) normalised image, the patch at its place (0 elsewhere)."""
        mean, std = _mean_std(device, 3, 1, 1)
        full = torch.zeros(1, 3, height, width, device=device)
        row, col = self.origin(height, width)
        patch = torch.as_tensor(self.pattern, device=device).permute(2, 0, 1)
        full[0, :, row : row + self.size, col : col + self.size] = (patch - mean) / std
        return full

    def from_normalised(self, trigger: torch.Tensor) -> np.ndarray:
        """The patch region of a (1, C, H, W) normalised trigger as float32 pixels (size, size, C)."""
        mean, std = _mean_std(trigger.device, 3, 1, 1)
        row, col = self.origin(trigger.shape[2], trigger.shape[3])
        patch = trigger[0, :, row : row + self.size, col : col + self.size].detach() * std + mean
        return patch.clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy().astype(np.float32)


def stamp(x: torch.Tensor, trigger: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, C, H, W) with the (1, C, H, W) ``trigger`` replacing them under ``mask``."""
    return x * (1.0 - mask) + trigger * mask
