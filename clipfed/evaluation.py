"""Server-side evaluation: MA on the clean test set and ASR on the attack's triggered test images.

Which test images count for ASR is the attack's rule (``Attack.asr_mask``): for a trigger attack,
every image whose true class is not the target (a target-class image "classified as the target" is
a correct prediction, not a backdoor success); for label flipping with a source class, that class.

A metric that cannot be computed is None, never a number: a diverged model (NaN or Inf parameters
or logits, whose argmax would be class 0 and read as a perfect backdoor on target 0) or an empty
image set. ``Evaluation.unavailable`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clipfed.attacks import Attack
from clipfed.data import ImageSet
from clipfed.devices import autocast, place
from clipfed.training import NonFiniteLogits, per_class_accuracy, predict, to_tensor


@dataclass(frozen=True)
class Evaluation:
    """MA and ASR are fractions in [0, 1]; None where uncomputable, with the reason in
    ``unavailable`` (metric name -> why). ``diverged``: the model's parameters or logits are not
    finite, so no metric of it means anything."""

    ma: float | None
    asr: float | None
    per_class_acc: list[float | None]
    diverged: bool = False
    unavailable: dict[str, str] = field(default_factory=dict)


def format_metric(value: float | None, diverged: bool = False) -> str:
    """A metric for a table: ``diverged`` or ``n/a`` where there is no number, never a stand-in."""
    if diverged:
        return "diverged"
    return "n/a" if value is None else f"{value:.3f}"


def parameters_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer (BatchNorm statistics too) is finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def eval_subset(test: ImageSet, samples: int) -> ImageSet:
    """A fixed, class-balanced subset of ``samples`` test images (all of them when 0 or more than
    there are), the same for every run and seed so that rows of a table compare like with like."""
    if not samples or samples >= len(test):
        return test
    rng = np.random.default_rng(0)
    per_class = max(samples // len(test.classes), 1)
    chosen = [rng.permutation(np.flatnonzero(test.labels == c))[:per_class] for c in range(len(test.classes))]
    return test.subset(np.sort(np.concatenate(chosen)))


def asr_images(test: ImageSet, attack: Attack) -> np.ndarray:
    """Triggered copies of the test images the attack counts for ASR (``Attack.asr_mask``)."""
    return attack.apply_trigger(np.asarray(test.images[attack.asr_mask(np.asarray(test.labels))]))


class BackdoorEvaluator:
    """Holds the clean and triggered test tensors once, on ``device``; evaluates any model on both.

    Args:
        test: the test images (uint8 (N, H, W, C)) and labels.
        attack: whose trigger ASR measures; None: no ASR.
        batch_size: images per forward pass.
        device: where the images live and models are evaluated (moved there once, here, not per
            model or batch); predictions come back to the CPU for the metrics.
        amp: bf16 autocast on CUDA (``devices.amp_active``); nothing on the CPU.
    """

    def __init__(self, test: ImageSet, attack: Attack | None, batch_size: int = 1000,
                 device: torch.device | None = None, amp: bool = False) -> None:
        self.num_classes = len(test.classes)
        self.batch_size = batch_size
        self.device = device if device is not None else torch.device("cpu")
        self.amp = amp
        self.clean_x = to_tensor(np.asarray(test.images), self.device)  # (N, C, H, W) on the device
        self.clean_y = torch.from_numpy(np.asarray(test.labels, dtype=np.int64))  # (N,) on the CPU
        self.attack = attack
        self.triggered_x = to_tensor(asr_images(test, attack), self.device) if attack else None
        self.missing: dict[str, str] = {}  # what no model can be scored on, whatever its weights
        if not len(self.clean_x):
            self.missing["ma"] = "no clean test image"
        if attack is None:
            self.missing["asr"] = "no attack"
        elif self.triggered_x is not None and not len(self.triggered_x):
            self.missing["asr"] = f"no test image counts for ASR under {type(attack).__name__} (Attack.asr_mask)"
        absent = [c for c in range(self.num_classes) if not (self.clean_y == c).any()]
        if absent:
            self.missing["per_class_acc"] = f"no test image of class(es) {absent}"

    def __call__(self, model: torch.nn.Module) -> Evaluation:
        """MA, ASR and per-class accuracy of ``model``; every metric None if it diverged.

        ``model`` is moved to the evaluator's device (in place; nothing moves when it is there).
        """
        if not parameters_finite(model):
            return self._diverged("non-finite parameters")
        place(model, self.device, self.amp)
        try:
            with autocast(self.device, self.amp):
                ma, per_class = self._clean_accuracy(model)
                asr = self._attack_success(model)
        except NonFiniteLogits as err:
            return self._diverged(f"non-finite logits ({err})")
        return Evaluation(ma=ma, asr=asr, per_class_acc=per_class, unavailable=dict(self.missing))

    def _clean_accuracy(self, model: torch.nn.Module) -> tuple[float | None, list[float | None]]:
        if "ma" in self.missing:
            return None, [None] * self.num_classes
        pred = predict(model, self.clean_x, self.batch_size).cpu()
        return float((pred == self.clean_y).double().mean()), per_class_accuracy(pred, self.clean_y, self.num_classes)

    def _attack_success(self, model: torch.nn.Module) -> float | None:
        if "asr" in self.missing or self.attack is None or self.triggered_x is None:
            return None
        hits = predict(model, self.triggered_x, self.batch_size).cpu() == self.attack.target_label
        return float(hits.double().mean())

    def _diverged(self, why: str) -> Evaluation:
        reason = f"diverged: {why}"
        unavailable = {"ma": reason, "asr": self.missing.get("asr", reason), "per_class_acc": reason}
        return Evaluation(ma=None, asr=None, per_class_acc=[None] * self.num_classes, diverged=True,
                          unavailable=unavailable)
