"""Server-side evaluation: MA on the clean test set and ASR on triggered non-target images.

ASR counts only test images whose true class is not the target: a target-class image "classified
as the target" is a correct prediction, not a backdoor success.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipfed.attacks import Attack
from clipfed.data import ImageSet
from clipfed.models import ClassifierNet
from clipfed.training import per_class_accuracy, predict, to_tensor


@dataclass(frozen=True)
class Evaluation:
    ma: float
    asr: float | None
    per_class_acc: list[float]


def eval_subset(test: ImageSet, samples: int) -> ImageSet:
    """A fixed, class-balanced subset of ``samples`` test images (all of them when 0 or more than
    there are), the same for every run and seed so that rows of a table compare like with like."""
    if not samples or samples >= len(test):
        return test
    rng = np.random.default_rng(0)
    per_class = max(samples // len(test.classes), 1)
    chosen = [rng.permutation(np.flatnonzero(test.labels == c))[:per_class] for c in range(len(test.classes))]
    return test.subset(np.sort(np.concatenate(chosen)))


def non_target_triggered(test: ImageSet, attack: Attack) -> np.ndarray:
    """Triggered copies of every test image whose true label is not the attack's target."""
    return attack.apply_trigger(np.asarray(test.images[test.labels != attack.target_label]))


class BackdoorEvaluator:
    """Holds the clean and triggered test tensors once; evaluates any model on both."""

    def __init__(self, test: ImageSet, attack: Attack | None, batch_size: int = 1000) -> None:
        self.num_classes = len(test.classes)
        self.batch_size = batch_size
        self.clean_x = to_tensor(np.asarray(test.images))
        self.clean_y = torch.from_numpy(np.asarray(test.labels, dtype=np.int64))
        self.attack = attack
        self.triggered_x = to_tensor(non_target_triggered(test, attack)) if attack else None

    def __call__(self, model: ClassifierNet) -> Evaluation:
        pred = predict(model, self.clean_x, self.batch_size)
        ma = float((pred == self.clean_y).double().mean())
        per_class = per_class_accuracy(pred, self.clean_y, self.num_classes)
        asr = None
        if self.attack is not None and self.triggered_x is not None:
            hits = predict(model, self.triggered_x, self.batch_size) == self.attack.target_label
            asr = float(hits.double().mean())
        return Evaluation(ma=ma, asr=asr, per_class_acc=per_class)
