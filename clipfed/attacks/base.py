"""What a data-poisoning backdoor attack is: a trigger, a target class and a poison rate.

Images are uint8 arrays of shape (N, H, W, C) throughout, so that a trigger is applied exactly
once, to the pixels a camera would give, before any normalisation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clipfed.config import RunConfig

TRIGGER_SEED = 0xBAD  # the attacker's fixed secret for random trigger patterns


@dataclass(frozen=True)
class PoisonedData:
    """A client's training set after poisoning; ``poisoned`` marks the rewritten samples."""

    images: np.ndarray
    labels: np.ndarray
    poisoned: np.ndarray


class Attack(ABC):
    """A backdoor: stamp a trigger on a share of the client's images and relabel them to the target."""

    def __init__(self, cfg: RunConfig) -> None:
        self.target_label = cfg.target_label
        self.poison_rate = cfg.poison_rate

    @abstractmethod
    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        """Triggered copies of ``images``: the full trigger, as the attacker uses it at test time."""

    def asr_mask(self, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: which test images ASR is measured on (triggered, then counted when classified
        as the target). Here every image whose true class is not the target: a target-class image
        classified as the target is a correct prediction, not a backdoor success."""
        return np.asarray(labels) != self.target_label

    def training_trigger(self, images: np.ndarray, malicious_rank: int) -> np.ndarray:
        """The trigger one attacker stamps while training; DBA gives each its own part."""
        return self.apply_trigger(images)

    def craft_update(self, global_state: dict[str, np.ndarray], local_state: dict[str, np.ndarray],
                     memory: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model-level manipulation of the trained local model (scaling, Neurotoxin); identity here.

        Both states hold the trainable parameters only (no BatchNorm statistics); the returned
        mapping replaces them. ``memory`` persists across this client's rounds (the node's state).
        """
        return local_state

    def poison(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
               malicious_rank: int = 0) -> PoisonedData:
        """Trigger and relabel ``round(poison_rate * N)`` samples whose label is not the target.

        Target-class samples are never chosen: relabelling them would be a no-op that only
        inflates the reported poison count.
        """
        candidates = np.flatnonzero(labels != self.target_label)
        count = min(len(candidates), round(self.poison_rate * len(labels)))
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        poisoned = np.zeros(len(labels), dtype=bool)
        poisoned[chosen] = True
        new_images = images.copy()
        new_labels = labels.copy()
        if count:
            new_images[chosen] = self.training_trigger(images[chosen], malicious_rank)
            new_labels[chosen] = self.target_label
        return PoisonedData(new_images, new_labels, poisoned)
