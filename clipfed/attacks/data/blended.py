"""Blended (Chen et al. 2017): a full-image pattern mixed in with weight ``blend-alpha``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clipfed.attacks.base import TRIGGER_SEED, DataPoisoning
from clipfed.attacks.registry import DATA_PARTS

if TYPE_CHECKING:
    from clipfed.config import RunConfig


def blend_pattern(kind: str, height: int, width: int, channels: int = 3) -> np.ndarray:
    """The (H, W, C) uint8 pattern for ``blend-pattern``: fixed noise, or vertical stripes."""
    if kind == "noise":
        rng = np.random.default_rng(TRIGGER_SEED)
        return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if kind == "stripes":
        column = (np.sin(np.arange(width) * 2 * np.pi / 6) + 1) * 127.5
        return np.broadcast_to(column[None, :, None], (height, width, channels)).round().astype(np.uint8)
    raise ValueError(f"unknown blend pattern {kind!r}; allowed: noise, stripes")


class Blended(DataPoisoning):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.alpha = cfg.blend_alpha
        self.kind = cfg.blend_pattern

    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        pattern = blend_pattern(self.kind, images.shape[1], images.shape[2], images.shape[3])
        mixed = (1.0 - self.alpha) * images.astype(np.float32) + self.alpha * pattern.astype(np.float32)
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


@DATA_PARTS.register("blended")
def blended(cfg: RunConfig) -> DataPoisoning:
    return Blended(cfg)
