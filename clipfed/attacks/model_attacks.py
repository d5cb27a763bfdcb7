"""Attacks on the update itself, on top of the BadNets data poisoning.

- ``scaling`` (model replacement, Bagdasaryan et al. 2020): the malicious update is multiplied by
  ``boost-factor`` so it survives averaging.

``craft_update`` receives the trainable parameters only (the ClientApp leaves BatchNorm running
statistics as trained: boosting a running variance of 0.5 around a global 1.0 by 5 gives -1.5).
- ``neurotoxin`` (Zhang et al. 2022): the malicious update is restricted to the coordinates the
  benign clients change least, estimated from the last global step (the attacker's only view of
  them); ``neurotoxin-keep`` is the fraction of coordinates kept. The round-to-round global
  difference is remembered in the node's state; in its first round there is no estimate and the
  update is left whole. (The paper projects every step's gradient; projecting the final update
  is the common simplification.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clipfed.attacks.badnets import BadNets
from clipfed.attacks.registry import ATTACKS

if TYPE_CHECKING:
    from clipfed.config import RunConfig


class Scaling(BadNets):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.boost = cfg.boost_factor

    def craft_update(self, global_state: dict[str, np.ndarray], local_state: dict[str, np.ndarray],
                     memory: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: global_state[key] + self.boost * (value - global_state[key])
                for key, value in local_state.items()}


def neurotoxin_mask(global_step: np.ndarray, keep: float) -> np.ndarray:
    """Boolean mask keeping the ``keep`` fraction of coordinates with the smallest |global step|."""
    count = round(keep * global_step.size)
    mask = np.zeros(global_step.size, dtype=bool)
    mask[np.argsort(np.abs(global_step), kind="stable")[:count]] = True
    return mask


class Neurotoxin(BadNets):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.keep = cfg.neurotoxin_keep

    def craft_update(self, global_state: dict[str, np.ndarray], local_state: dict[str, np.ndarray],
                     memory: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = list(local_state)
        flat_global = np.concatenate([global_state[k].ravel() for k in keys])
        previous = memory.get("previous-global")
        memory["previous-global"] = flat_global
        if previous is None or previous.shape != flat_global.shape:
            return local_state
        mask = neurotoxin_mask(flat_global - previous, self.keep)
        out, offset = dict(local_state), 0
        for key in keys:
            size = local_state[key].size
            update = (local_state[key] - global_state[key]).ravel() * mask[offset : offset + size]
            out[key] = global_state[key] + update.reshape(local_state[key].shape).astype(local_state[key].dtype)
            offset += size
        return out


@ATTACKS.register("scaling")
def scaling(cfg: RunConfig) -> Scaling:
    return Scaling(cfg)


@ATTACKS.register("neurotoxin")
def neurotoxin(cfg: RunConfig) -> Neurotoxin:
    return Neurotoxin(cfg)
