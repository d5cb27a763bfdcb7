"""Neurotoxin's final-update variant (Zhang et al., ICML 2022): the update part ``neurotoxin``.

The trained update is restricted once, at the end, to the ``neurotoxin-keep`` fraction of
coordinates with the smallest magnitude in the last global step the node has seen: the global
model now minus the one it received in its previous attacking turn, remembered in its node state
(``previous-global``). This part has no model to take a gradient of, only parameters, so that
step is its estimate of the benign update, with two limitations the training part does not have:

- **First turn**: a node's first attacking turn has no previous global model in memory, so the
  update is sent whole, unmasked (the node only remembers the model for its next turn). With
  sampled clients that is a large share of attacker turns in a short attack window (about 44%
  over 20 attacked rounds with 10 of 100 clients a round: 0.88 first turns in 2 expected turns).
- **Stale step**: memory is written only in rounds the node attacks, so the "last step" spans
  every round since its previous turn (about 10 rounds with 10 of 100 clients a round), not the
  last one.

This is the common simplification, not the paper's attack: the paper (and its official code,
jhcknzzm/Federated-Learning-Backdoor, whose ``gradmask_ratio`` is the fraction kept) masks the
gradient of every SGD step with a mask from the current global model's gradient on clean data,
which is the ``neurotoxin`` *training* part (``clipfed/attacks/training/neurotoxin.py``) and what
the ``neurotoxin`` shorthand runs. This part stays for comparison (``attack='badnets'
attack-update='neurotoxin'``): it trains every coordinate and then discards the masked ones, so
the kept coordinates were fitted together with changes that are never sent.
"""

from __future__ import annotations

import numpy as np

from clipfed.attacks.base import AttackContext, Params, UpdatePart
from clipfed.attacks.registry import UPDATE_PARTS
from clipfed.config import RunConfig

MEMORY_KEY = "previous-global"  # the global parameters (flat) the node received in its last attacking turn


def neurotoxin_mask(estimate: np.ndarray, keep: float) -> np.ndarray:
    """(d,) bool mask keeping the ``round(keep * d)`` coordinates of the smallest magnitude in the
    (d,) ``estimate`` of the benign update (a global step, or a gradient; ties broken by position)."""
    count = round(keep * estimate.size)
    mask = np.zeros(estimate.size, dtype=bool)
    mask[np.argsort(np.abs(estimate), kind="stable")[:count]] = True
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
