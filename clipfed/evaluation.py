"""Server-side evaluation: MA on the clean test set, ASR and R-Acc on the attack's triggered test images.

Which test images count for ASR is the attack's rule (``Attack.asr_mask``): for a trigger attack,
every image whose true class is not the target (a target-class image "classified as the target" is
a correct prediction, not a backdoor success); for label flipping with a source class, that class.
R-Acc (robust accuracy) is the share of those same images still given their *true* label: ASR
alone cannot tell a model that ignores the trigger from one the trigger merely confuses (both
have a low ASR; only the first keeps R-Acc near MA).

A trigger the attackers learn against the global model (``DataPoisoning.learns_trigger``: A3FL,
F3BA) cannot be rebuilt from the run config, and a reply that carried it would hand it to the
defense. ASR is then measured with the server's re-derivation of it: each attacked round,
``rederive_trigger`` runs the attackers' own ``prepare`` against the global model they received, on
public-pool images (``trigger_pool``), with the evaluator's own memory and stream. That trigger is
optimised white-box against each defense's own global model, so a learned trigger's ASR partly
measures how easily that model is fooled by a patch learned against it, not only the backdoor the
attackers implanted. The clean floor of the same setting (``clipfed.bench.durable``: FedAvg with
no attacker, the trigger re-derived the same way against its model) measures the same mechanism
and is the baseline to read such an ASR against. The time the server spends re-deriving is
reported per round (``trigger_seconds`` in ``result.json``, a part of ``round_seconds``). The
evaluator's memory goes into the checkpoint, and a resumed run restores it (``restore_trigger``):
it measures ASR with, and re-derives on from, the trigger the interrupted run had reached.

A metric that cannot be computed is None, never a number: a diverged model (NaN or Inf parameters
or logits, whose argmax would be class 0 and read as a perfect backdoor on target 0) or an empty
image set. ``Evaluation.unavailable`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clipfed.attacks import Attack
from clipfed.attacks.base import AttackContext
from clipfed.config import INFERENCE_BATCH
from clipfed.data import FederatedSplit, ImageSet
from clipfed.devices import autocast, place
from clipfed.streams import Stream, stream_rng
from clipfed.training import NonFiniteLogits, per_class_accuracy, predict, to_tensor


@dataclass(frozen=True)
class Evaluation:
    """MA, ASR and R-Acc are fractions in [0, 1]; None where uncomputable, with the reason in
    ``unavailable`` (metric name -> why). ``diverged``: the model's parameters or logits are not
    finite, so no metric of it means anything. ``racc`` is None exactly where ``asr`` is (it is
    measured on the same images)."""

    ma: float | None
    asr: float | None
    per_class_acc: list[float | None]
    racc: float | None = None
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


def asr_images(test: ImageSet, attack: Attack) -> tuple[np.ndarray, np.ndarray]:
    """Triggered copies of the test images the attack counts for ASR (``Attack.asr_mask``), and
    their true labels (what R-Acc scores them against)."""
    labels = np.asarray(test.labels)
    mask = attack.asr_mask(labels)
    return attack.apply_trigger(np.asarray(test.images[mask])), labels[mask].astype(np.int64)


def trigger_pool(train: ImageSet, split: FederatedSplit, seed: int) -> ImageSet:
    """The public-pool images (and labels) the server re-derives a learned trigger on: as many as a
    client's mean shard (what an attacker learns it on), drawn from ``seed``; empty with no pool."""
    shard = round(sum(len(c) for c in split.clients) / max(len(split.clients), 1))
    count = min(shard, len(split.public_pool))
    chosen = stream_rng(seed, Stream.TRIGGER_REDERIVATION).choice(split.public_pool, size=count, replace=False)
    return train.subset(np.sort(chosen))


class BackdoorEvaluator:
    """Holds the clean and triggered test tensors once, on ``device``; evaluates any model on both.

    Args:
        test: the test images (uint8 (N, H, W, C)) and labels.
        attack: whose trigger ASR measures; None: no ASR.
        batch_size: images per forward pass.
        device: where the images live and models are evaluated (moved there once, here, not per
            model or batch); predictions come back to the CPU for the metrics.
        amp: bf16 autocast on CUDA (``devices.amp_active``); nothing on the CPU.
        trigger_pool: public-pool images for ``rederive_trigger`` (the ServerApp's ``trigger_pool``);
            None: a learned trigger is measured as it starts (tests, benchmarks).
        seed: the run's seed, for the re-derivation's stream.
    """

    def __init__(self, test: ImageSet, attack: Attack | None, batch_size: int = INFERENCE_BATCH,
                 device: torch.device | None = None, amp: bool = False,
                 trigger_pool: ImageSet | None = None, seed: int = 0) -> None:
        self.test = test
        self.trigger_pool = trigger_pool
        self.seed = seed
        self.trigger_memory: dict[str, np.ndarray] = {}  # the re-derivation's node state, across rounds
        self.num_classes = len(test.classes)
        self.batch_size = batch_size
        self.device = device if device is not None else torch.device("cpu")
        self.amp = amp
        self.clean_x = to_tensor(np.asarray(test.images), self.device)  # (N, C, H, W) on the device
        self.clean_y = torch.from_numpy(np.asarray(test.labels, dtype=np.int64))  # (N,) on the CPU
        self.attack = attack
        self.triggered_x: torch.Tensor | None = None
        self.triggered_y: torch.Tensor | None = None  # true labels of the triggered images, on the CPU
        if attack is not None:
            self._stamp()
        self.missing: dict[str, str] = {}  # what no model can be scored on, whatever its weights
        if not len(self.clean_x):
            self.missing["ma"] = "no clean test image"
        if attack is None:
            self.missing["asr"] = "no attack"
        elif self.triggered_x is not None and not len(self.triggered_x):
            self.missing["asr"] = f"no test image counts for ASR under {type(attack).__name__} (Attack.asr_mask)"
        if "asr" in self.missing:
            self.missing["racc"] = self.missing["asr"]
        absent = [c for c in range(self.num_classes) if not (self.clean_y == c).any()]
        if absent:
            self.missing["per_class_acc"] = f"no test image of class(es) {absent}"

    @property
    def rederives(self) -> bool:
        """Whether the attack's trigger is learned, and so re-derived every attacked round."""
        return self.attack is not None and self.attack.data.learns_trigger

    def rederive_trigger(self, model: torch.nn.Module, server_round: int) -> None:
        """Re-derive a learned trigger as round ``server_round``'s attackers learn theirs, and
        measure ASR (and R-Acc) with it from now on; nothing for a fixed trigger.

        Args:
            model: the global model that round's attackers received (moved to the evaluator's
                device in place, otherwise left as it is).
            server_round: the attacked round (1-based); its own seed for the batch order.
        Raises:
            ValueError: a learned trigger and no (or an empty) ``trigger_pool``.
        """
        if self.attack is None or not self.rederives:
            return
        if self.trigger_pool is None or not len(self.trigger_pool):
            raise ValueError("a learned trigger is re-derived on public-pool images: the evaluator has none")
        place(model, self.device, self.amp)
        params = {name: p.detach().cpu().numpy() for name, p in model.named_parameters()}
        ctx = AttackContext(server_round, 0, params, memory=self.trigger_memory)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(stream_rng(self.seed, Stream.TRIGGER_REDERIVATION, server_round).integers(2**62)))
            self.attack.data.prepare(model, self.trigger_pool.images, self.trigger_pool.labels, ctx)
        self._stamp()

    def restore_trigger(self, memory: dict[str, np.ndarray]) -> None:
        """Continue from a checkpoint's ``trigger_memory``: the re-derivation goes on from it, and ASR
        (and R-Acc) are measured with the trigger it holds; nothing for a fixed trigger."""
        if self.attack is None or not self.rederives:
            return
        self.trigger_memory = {k: v.copy() for k, v in memory.items()}
        self.attack.data.recall(self.trigger_memory)
        self._stamp()

    def _stamp(self) -> None:
        """Stamp the test images ASR counts with the attack's current trigger, on the device, and
        keep their true labels (on the CPU) for R-Acc."""
        assert self.attack is not None  # only called with an attack
        images, labels = asr_images(self.test, self.attack)
        self.triggered_x, self.triggered_y = to_tensor(images, self.device), torch.from_numpy(labels)

    def __call__(self, model: torch.nn.Module) -> Evaluation:
        """MA, ASR, R-Acc and per-class accuracy of ``model``; every metric None if it diverged.

        ``model`` is moved to the evaluator's device (in place; nothing moves when it is there).
        """
        if not parameters_finite(model):
            return self._diverged("non-finite parameters")
        place(model, self.device, self.amp)
        try:
            with autocast(self.device, self.amp):
                ma, per_class = self._clean_accuracy(model)
                asr, racc = self._triggered_scores(model)
        except NonFiniteLogits as err:
            return self._diverged(f"non-finite logits ({err})")
        return Evaluation(ma=ma, asr=asr, per_class_acc=per_class, racc=racc, unavailable=dict(self.missing))

    def _clean_accuracy(self, model: torch.nn.Module) -> tuple[float | None, list[float | None]]:
        if "ma" in self.missing:
            return None, [None] * self.num_classes
        pred = predict(model, self.clean_x, self.batch_size).cpu()
        return float((pred == self.clean_y).double().mean()), per_class_accuracy(pred, self.clean_y, self.num_classes)

    def _triggered_scores(self, model: torch.nn.Module) -> tuple[float | None, float | None]:
        """ASR (predicted the target) and R-Acc (predicted the true label) from one pass over the
        triggered images."""
        if "asr" in self.missing or self.attack is None or self.triggered_x is None or self.triggered_y is None:
            return None, None
        pred = predict(model, self.triggered_x, self.batch_size).cpu()
        return (float((pred == self.attack.target_label).double().mean()),
                float((pred == self.triggered_y).double().mean()))

    def _diverged(self, why: str) -> Evaluation:
        reason = f"diverged: {why}"
        unavailable = {"ma": reason, "asr": self.missing.get("asr", reason),
                       "racc": self.missing.get("racc", reason), "per_class_acc": reason}
        return Evaluation(ma=None, asr=None, per_class_acc=[None] * self.num_classes, diverged=True,
                          unavailable=unavailable)
