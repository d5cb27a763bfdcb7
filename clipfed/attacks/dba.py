"""DBA (Xie et al. 2020): the BadNets patch split into parts, one per attacker; the full patch
(the union of the parts) is the trigger at test time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clipfed.attacks.badnets import BadNets
from clipfed.attacks.registry import ATTACKS

if TYPE_CHECKING:
    from clipfed.config import RunConfig


class DBA(BadNets):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.parts = cfg.dba_parts

    def part_mask(self, part: int, height: int, width: int) -> np.ndarray:
        """Rows of the full patch split into ``dba-parts`` contiguous bands; band ``part``."""
        full = self.trigger_mask(height, width)
        rows = np.flatnonzero(full.any(axis=1))
        band = np.array_split(rows, self.parts)[part % self.parts]
        mask = np.zeros_like(full)
        mask[band] = full[band]
        return mask

    def training_trigger(self, images: np.ndarray, malicious_rank: int) -> np.ndarray:
        mask = self.part_mask(malicious_rank, images.shape[1], images.shape[2])
        out = images.copy()
        out[:, mask] = self.apply_trigger(images)[:, mask]
        return out


@ATTACKS.register("dba", "distributed backdoor: each attacker stamps one part of the patch (dba-parts)")
def dba(cfg: RunConfig) -> DBA:
    return DBA(cfg)
