"""Neurotoxin's final-update variant (Zhang et al., ICML 2022): the update part ``neurotoxin``.

The trained update is restricted once, at the end, to the ``neurotoxin-keep`` fraction of
coordinates with the smallest magnitude in the last global step (the attacker's only view of the
benign updates). The round-to-round global difference is remembered in the node's state; in its
first round there is no estimate and the update is left whole.

This is the common simplification, not the paper's attack: the paper (and its official code,
jhcknzzm/Federated-Learning-Backdoor, whose ``gradmask_ratio`` is the fraction kept) masks the
gradient of every SGD step, which is the ``neurotoxin`` *training* part
(``clipfed/attacks/training/neurotoxin.py``) and what the ``neurotoxin`` shorthand runs. This part
stays for comparison (``attack='badnets' attack-update='neurotoxin'``): it trains every coordinate
and then discards the masked ones, so the kept coordinates were fitted together with changes that
are never sent.
"""

from __future__ import annotations

import numpy as np

from clipfed.attacks.base import AttackContext, Params, UpdatePart
from clipfed.attacks.registry import UPDATE_PARTS
from clipfed.config import RunConfig

MEMORY_KEY = "previous-global"  # the node's memory of last round's global parameters (flat)


def neurotoxin_mask(global_step: np.ndarray, keep: float) -> np.ndarray:
    """(d,) bool mask keeping the ``keep`` fraction of coordinates with the smallest |global step| (d,)."""
    count = round(keep * global_step.size)
    mask = np.zeros(global_step.size, dtype=bool)
    mask[np.argsort(np.abs(global_step), kind="stable")[:count]] = True
    return mask


class Neurotoxin(UpdatePart):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.keep = cfg.neurotoxin_keep

    def craft(self, local_params: Params, ctx: AttackContext) -> Params:
        keys, base = list(local_params), ctx.global_params
        flat_global = np.concatenate([base[k].ravel() for k in keys])
        previous = ctx.memory.get(MEMORY_KEY)
        ctx.memory[MEMORY_KEY] = flat_global
        if previous is None or previous.shape != flat_global.shape:
            return local_params
        mask = neurotoxin_mask(flat_global - previous, self.keep)
        out, offset = dict(local_params), 0
        for key in keys:
            size = local_params[key].size
            update = (local_params[key] - base[key]).ravel() * mask[offset : offset + size]
            out[key] = base[key] + update.reshape(local_params[key].shape).astype(local_params[key].dtype)
            offset += size
        return out


@UPDATE_PARTS.register("neurotoxin")
def neurotoxin(cfg: RunConfig) -> UpdatePart:
    return Neurotoxin(cfg)
