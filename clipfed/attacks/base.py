"""What a backdoor attack is: three independent parts, each chosen by name.

- A **data part** (``attack-data``, ``clipfed/attacks/data/``): the trigger and which samples it
  poisons and relabels; the server measures ASR with its ``apply_trigger`` and ``asr_mask``.
- A **training part** (``attack-training``, ``clipfed/attacks/training/``): how a malicious client
  trains: its own schedule (epochs, steps, lr), extra loss terms and a per-step action
  (projection, masking), and work before training against the received global model.
- An **update part** (``attack-update``, ``clipfed/attacks/update/``): how the trained parameters
  are rewritten before they are sent (model replacement's scaling, masking).

Data poisoning and model poisoning are independent choices, as in BackFed: any trigger with any
update rule (``attack='blended' attack-update='scaling'``). ``Attack`` composes the three; the
ClientApp calls them in this order: ``data.prepare`` and ``training.prepare`` (against the global
model), ``data.poison``, local training with ``training.schedule`` and ``training.hooks``, then
``update.craft``.

Images are uint8 arrays of shape (N, H, W, C) throughout, so that a trigger is applied exactly
once, to the pixels a camera would give, before any normalisation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from clipfed.training import LocalSchedule, StepHooks

if TYPE_CHECKING:
    from clipfed.config import RunConfig

__all__ = ["Attack", "AttackContext", "DataPoisoning", "LocalSchedule", "Params", "PoisonedData", "StepHooks",
           "TrainingPart", "UpdatePart"]

TRIGGER_SEED = 0xBAD  # the attacker's fixed secret for random trigger patterns

Params = dict[str, np.ndarray]  # parameter name -> array (trainable parameters only)


@dataclass(frozen=True)
class PoisonedData:
    """A client's training set after poisoning.

    Attributes:
        images: uint8 (N, H, W, C), the poisoned samples rewritten.
        labels: int (N,), the poisoned samples relabelled.
        poisoned: bool (N,), which samples were rewritten.
    """

    images: np.ndarray
    labels: np.ndarray
    poisoned: np.ndarray


@dataclass
class AttackContext:
    """What a malicious client knows in one round, shared by its three parts.

    Attributes:
        server_round: the round being trained (1-based).
        malicious_rank: this attacker's rank among attackers (DBA's part, see ``NodeRole``).
        global_params: the received global model's trainable parameters (no BatchNorm statistics).
        memory: arrays that persist across this client's attacking turns (the node's state, written
            only in rounds it attacks), shared by the three parts: each uses keys no other part uses
            (Neurotoxin's update part: ``previous-global``; A3FL and F3BA: ``a3fl-*``, ``f3ba-*``).
        clean_images, clean_labels: the attacker's own shard before poisoning, uint8 (N, H, W, C)
            and int (N,) (what ``clipfed-aware`` builds its probe from); None where a caller has
            none to give (a part that needs them refuses to run without).
    """

    server_round: int
    malicious_rank: int
    global_params: Params
    memory: dict[str, np.ndarray] = field(default_factory=dict)
    clean_images: np.ndarray | None = None
    clean_labels: np.ndarray | None = None

    def anchored(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``model``'s trainable parameters and the global values they started from, both in
        ``global_params``' order: what a training part projects onto, resets to or measures its
        distance from. The global values are copied once to each parameter's device and dtype."""
        named = dict(model.named_parameters())
        params: list[torch.Tensor] = [named[name] for name in self.global_params]
        centre = [torch.as_tensor(value).to(device=p.device, dtype=p.dtype, copy=True)
                  for value, p in zip(self.global_params.values(), params, strict=True)]
        return params, centre


class DataPoisoning(ABC):
    """A data part: stamp a trigger on a share of the client's images and relabel them to the target.

    Args:
        cfg: the run config (``target-label``, ``poison-rate`` and the part's own keys).
    """

    # True for a trigger the attackers learn in ``prepare`` against the global model (A3FL, F3BA),
    # which the run config alone cannot rebuild: the server then measures ASR with its own
    # re-derivation of it (``clipfed.evaluation.BackdoorEvaluator.rederive_trigger``).
    learns_trigger: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig) -> None:
        self.target_label = cfg.target_label
        self.poison_rate = cfg.poison_rate

    @abstractmethod
    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        """Triggered copies of uint8 (N, H, W, C) ``images``: the full trigger, as the attacker
        uses it at test time (and the server measures ASR with)."""

    def asr_mask(self, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: which test images ASR is measured on (triggered, then counted when classified
        as the target). Here every image whose true class is not the target: a target-class image
        classified as the target is a correct prediction, not a backdoor success."""
        return np.asarray(labels) != self.target_label

    def training_trigger(self, images: np.ndarray, malicious_rank: int) -> np.ndarray:
        """The trigger one attacker stamps while training; DBA gives each its own part."""
        return self.apply_trigger(images)

    def prepare(self, model: nn.Module, images: np.ndarray, labels: np.ndarray, ctx: AttackContext) -> None:
        """Work against the received global ``model`` before poisoning (e.g. optimising the
        trigger); nothing for a fixed trigger. ``model`` must be left as received; it is on the
        node's training device already (``images`` and ``ctx`` stay numpy)."""
        return None

    def recall(self, memory: dict[str, np.ndarray]) -> None:
        """Take up the trigger a node's ``memory`` holds (a learned trigger, from the node's earlier
        rounds or the server's checkpoint), so that ``apply_trigger`` stamps it; nothing for a
        fixed trigger."""
        return None

    def poison(self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
               malicious_rank: int = 0) -> PoisonedData:
        """Trigger and relabel ``round(poison_rate * N)`` samples whose label is not the target.

        Target-class samples are never chosen: relabelling them would be a no-op that only
        inflates the reported poison count.

        Args:
            images: uint8 (N, H, W, C); labels: int (N,).
            rng: the client's training stream for this round (which samples are poisoned).
            malicious_rank: passed to ``training_trigger``.
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


class TrainingPart(ABC):
    """A training part: how a malicious client trains on its poisoned shard.

    Args:
        cfg: the run config (the part's own keys).
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def schedule(self, benign: LocalSchedule, num_samples: int) -> LocalSchedule:
        """The attacker's schedule, given the benign one and its shard size (images)."""

    def prepare(self, model: nn.Module, ctx: AttackContext) -> None:
        """Work against the received global ``model`` before training (e.g. estimating which
        coordinates to mask); nothing by default. ``model`` must be left as received; it is on the
        node's training device already (``ctx`` stays numpy)."""
        return None

    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks | None:
        """The per-step additions for this round's training of ``model``, or None for plain SGD.

        ``model`` is on the training device (and stays there); a tensor the hooks keep (PGD's
        centre) must be made on ``next(model.parameters()).device``."""
        return None


class UpdatePart(ABC):
    """An update part: rewrite the trained parameters before they are sent.

    Args:
        cfg: the run config (the part's own keys).
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def craft(self, local_params: Params, ctx: AttackContext) -> Params:
        """The parameters to send instead of ``local_params``.

        Args:
            local_params: the trained trainable parameters (no BatchNorm statistics, which the
                ClientApp leaves as trained: boosting a running variance can make it negative).
            ctx: ``ctx.global_params`` has the same keys and shapes; ``ctx.memory`` persists.
        Returns:
            A mapping with the same keys, shapes and dtypes.
        """


@dataclass(frozen=True)
class Attack:
    """An attack: its three parts, named as the config resolved them."""

    name: str
    data: DataPoisoning
    training: TrainingPart
    update: UpdatePart
    part_names: tuple[str, str, str]  # (attack-data, attack-training, attack-update)

    @property
    def target_label(self) -> int:
        return self.data.target_label

    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        """The data part's full trigger on uint8 (N, H, W, C) ``images`` (what ASR is measured with)."""
        return self.data.apply_trigger(images)

    def asr_mask(self, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: the test images ASR counts (the data part's rule)."""
        return self.data.asr_mask(labels)
