"""DBA (Xie et al., ICLR 2020): the global trigger split into local triggers, one per attacker.

The paper and its official code (github.com/AI-secure/DBA): the global trigger is 4 local
triggers laid out as a 2 x 2 grid (``trigger_num: 4``; for CIFAR-10 four 1x6 white bars at rows
0 and 4, columns 0-5 and 9-14, so with gaps between them). Attacker ``i`` (its index in
``adversary_list``) stamps local trigger ``i`` while training; at test time the union of all local
triggers is stamped (``adversarial_index=-1``), and a lone attacker uses that global trigger.

Here the global trigger is the BadNets patch (``patch-size``, ``patch-position``, ``patch-pattern``),
so DBA's ASR is measured with the same trigger as BadNets'. It is split into ``dba-parts``
contiguous cells of a grid: ``r`` row bands (``r`` near sqrt(parts), at least
ceil(parts / patch-size)), each band cut into near-equal column groups, the parts shared near
equally between bands. The default 4 parts of a 4x4 patch are its four 2x2 quadrants: the paper's
2 x 2 layout without the gaps. Every part is non-empty, the parts are disjoint and their union is
the patch; ``RunConfig`` refuses more parts than patch pixels. The attacker of rank ``r`` (its
node's ``malicious_rank``) stamps part ``r mod dba-parts``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from clipfed.attacks.data.badnets import BadNets, patch_origin
from clipfed.attacks.registry import DATA_PARTS

if TYPE_CHECKING:
    from clipfed.config import RunConfig


def part_cells(size: int, parts: int) -> list[tuple[slice, slice]]:
    """The ``parts`` (rows, cols) slices, relative to a ``size`` x ``size`` patch, row-major.

    Raises ``ValueError`` when ``parts`` is not in 1..size*size (some part would be empty).
    """
    if not 1 <= parts <= size * size:
        raise ValueError(f"dba-parts={parts} does not fit a {size}x{size} patch; "
                         f"allowed: 1..{size * size} (patch-size squared)")
    bands = min(size, max(math.ceil(parts / size), math.isqrt(parts)))
    def spans(length: int, pieces: int) -> list[slice]:
        return [slice(int(g[0]), int(g[-1]) + 1) for g in np.array_split(np.arange(length), pieces)]

    per_band = [len(group) for group in np.array_split(np.arange(parts), bands)]
    return [(rows, cols) for rows, count in zip(spans(size, bands), per_band, strict=True)
            for cols in spans(size, count)]


class DBA(BadNets):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.parts = cfg.dba_parts
        self.cells = part_cells(self.size, self.parts)

    def part_mask(self, part: int, height: int, width: int) -> np.ndarray:
        """Boolean (H, W) mask of part ``part mod dba-parts`` of the patch."""
        rows, cols = self.cells[part % self.parts]
        row, col = patch_origin(self.position, self.size, height, width)
        mask = np.zeros((height, width), dtype=bool)
        mask[row + rows.start : row + rows.stop, col + cols.start : col + cols.stop] = True
        return mask

    def training_trigger(self, images: np.ndarray, malicious_rank: int) -> np.ndarray:
        mask = self.part_mask(malicious_rank, images.shape[1], images.shape[2])
        out = images.copy()
        out[:, mask] = self.apply_trigger(images)[:, mask]
        return out


@DATA_PARTS.register("dba")
def dba(cfg: RunConfig) -> DBA:
    return DBA(cfg)
