"""The ``sgd`` training part: plain SGD on the poisoned shard, on the attacker's own schedule.

Attackers in the field train longer and harder than honest clients (BackFed: 6 local epochs at
lr 0.05 against the benign 2 at 0.01): ``attack-local-steps``, ``attack-epochs`` and ``attack-lr``
replace the benign ``local-steps``, ``local-epochs`` and ``lr`` when set (0: as benign). An attacker
with ``attack-epochs`` and no ``attack-local-steps`` trains those whole epochs (the benign
``local-steps`` cap does not bind it); when ``attack-local-steps`` exceeds what the epochs allow,
the epochs grow to fit it. Momentum and weight decay are the benign clients' (the schedule carries
them, so a training part may set its own).
"""

from __future__ import annotations

import math
from dataclasses import replace

from clipfed.attacks.base import LocalSchedule, TrainingPart
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.config import RunConfig


class AttackerSGD(TrainingPart):
    def schedule(self, benign: LocalSchedule, num_samples: int) -> LocalSchedule:
        cfg = self.cfg
        epochs = cfg.attack_epochs or benign.epochs
        steps = 0 if cfg.attack_epochs else benign.max_steps
        if cfg.attack_local_steps:
            steps = cfg.attack_local_steps
            epochs = max(epochs, math.ceil(steps / math.ceil(num_samples / cfg.batch_size)))
        return replace(benign, epochs=epochs, max_steps=steps, lr=cfg.attack_lr or benign.lr)


@TRAINING_PARTS.register("sgd")
def sgd(cfg: RunConfig) -> TrainingPart:
    return AttackerSGD(cfg)
