"""Label flipping (Tolpegin et al. 2020): no trigger; samples of ``flip-source`` (every non-target
class when -1) are relabelled to the target. ASR is then the rate at which clean test images
of the source class (every non-target class when -1) are classified as the target: counting classes
the attack never aimed at would dilute it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clipfed.attacks.base import DataPoisoning, PoisonedData
from clipfed.attacks.registry import DATA_PARTS

if TYPE_CHECKING:
    from clipfed.config import RunConfig


class LabelFlip(DataPoisoning):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.source = cfg.flip_source

    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        return images.copy()

    def asr_mask(self, labels: np.ndarray) -> np.ndarray:
        """The source class's images when one is set (none when it is the target itself)."""
        non_target = super().asr_mask(labels)
        return non_target if self.source < 0 else non_target & (np.asarray(labels) == self.source)

    def poison(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
               malicious_rank: int = 0) -> PoisonedData:
        eligible = labels != self.target_label if self.source < 0 else labels == self.source
        candidates = np.flatnonzero(eligible)
        count = min(len(candidates), round(self.poison_rate * len(labels)))
        chosen = rng.choice(candidates, size=count, replace=False)
        flipped = np.zeros(len(labels), dtype=bool)
        flipped[chosen] = True
        new_labels = labels.copy()
        new_labels[chosen] = self.target_label
        return PoisonedData(images.copy(), new_labels, flipped)


@DATA_PARTS.register("labelflip")
def labelflip(cfg: RunConfig) -> LabelFlip:
    return LabelFlip(cfg)
