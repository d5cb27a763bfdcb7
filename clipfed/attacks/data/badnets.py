"""BadNets (Gu et al. 2017): a small fixed patch stamped at a fixed position."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clipfed.attacks.base import TRIGGER_SEED, DataPoisoning
from clipfed.attacks.registry import DATA_PARTS

if TYPE_CHECKING:
    from clipfed.config import RunConfig

MARGIN = 1  # pixels between the patch and the image border


def patch_pattern(kind: str, size: int, channels: int = 3) -> np.ndarray:
    """The (size, size, channels) uint8 patch for ``patch-pattern``."""
    if kind == "white":
        return np.full((size, size, channels), 255, dtype=np.uint8)
    if kind == "checkerboard":
        board = (np.indices((size, size)).sum(axis=0) % 2 == 0).astype(np.uint8) * 255
        return np.repeat(board[:, :, None], channels, axis=2)
    if kind == "random":
        rng = np.random.default_rng(TRIGGER_SEED)
        return rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
    raise ValueError(f"unknown patch pattern {kind!r}; allowed: white, checkerboard, random")


def patch_origin(position: str, size: int, height: int, width: int) -> tuple[int, int]:
    """Top-left corner (row, col) of the patch for ``patch-position``."""
    last_row, last_col = height - size - MARGIN, width - size - MARGIN
    origins = {
        "bottom-right": (last_row, last_col),
        "bottom-left": (last_row, MARGIN),
        "top-right": (MARGIN, last_col),
        "top-left": (MARGIN, MARGIN),
        "center": ((height - size) // 2, (width - size) // 2),
    }
    if position not in origins:
        raise ValueError(f"unknown patch position {position!r}; allowed: {', '.join(origins)}")
    return origins[position]


class BadNets(DataPoisoning):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.size = cfg.patch_size
        self.position = cfg.patch_position
        self.pattern = patch_pattern(cfg.patch_pattern, cfg.patch_size)

    def trigger_mask(self, height: int, width: int) -> np.ndarray:
        """Boolean (H, W) mask of the pixels the trigger overwrites."""
        mask = np.zeros((height, width), dtype=bool)
        row, col = patch_origin(self.position, self.size, height, width)
        mask[row : row + self.size, col : col + self.size] = True
        return mask

    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        out = images.copy()
        row, col = patch_origin(self.position, self.size, images.shape[1], images.shape[2])
        out[:, row : row + self.size, col : col + self.size, :] = self.pattern
        return out


@DATA_PARTS.register("badnets")
def badnets(cfg: RunConfig) -> DataPoisoning:
    return BadNets(cfg)
