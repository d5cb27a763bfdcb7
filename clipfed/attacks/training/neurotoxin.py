"""Neurotoxin as its paper trains it (Zhang et al., ICML 2022, "Neurotoxin: Durable Backdoors in
Federated Learning"): every SGD step is restricted to the coordinates benign clients rarely change.

Which coordinates: the ``neurotoxin-keep`` fraction with the smallest magnitude in the last global
step (the global model now minus the one this attacker last received, the paper's estimate of the
benign gradient, Algorithm 1), over all trainable parameters together (``neurotoxin_mask``, shared
with the update part). The previous global model is kept in the node's memory under its own key,
so this part composes with the ``neurotoxin`` update part; in an attacker's first attacking round
there is no estimate and it trains unmasked (as the official code does with ``gradmask_ratio`` 1).

The official code (jhcknzzm/Federated-Learning-Backdoor, ``FL_Backdoor_CV/train_funcs.py``)
multiplies every gradient by the 0/1 mask after ``backward`` (``apply_grad_mask``) and then steps
SGD with ``poison_momentum`` 0.9 and ``poison_decay`` 0.005 (``utils/cifar10_params.yaml``;
``poison_lr`` 0.05 there, ``--poison_lr 0.02`` in its CIFAR scripts). Its ``gradmask_ratio`` is the
fraction kept ("the proportion of the gradient retained"; default 1, no mask; the CIFAR scripts
run 0.95-0.99 with ``--aggregate_all_layer 1``, one top-k over all layers as here); its mask comes
from the global model's gradient on clean data rather than the last global step. The default
``neurotoxin-keep`` 0.9 is this project's (masks more than the scripts do).

Weight decay and momentum: in the official code weight decay is added inside ``step``, after the
mask, so the masked coordinates still shrink by lr x decay x w per step and the momentum buffer
carries that on. Here ``before_step`` zeroes the gradient outside the mask (the paper's step) and
``after_step`` resets the masked coordinates to the global model's values after every step, so
they never move, whatever the momentum and weight decay: the sent update is exactly zero outside
the mask. BatchNorm statistics are buffers, not parameters, and train as usual.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from clipfed.attacks.base import AttackContext, StepHooks
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.attacks.training.sgd import AttackerSGD
from clipfed.attacks.update.neurotoxin import neurotoxin_mask
from clipfed.config import RunConfig

MEMORY_KEY = "neurotoxin-training-previous-global"  # last round's global parameters (flat), this part's own


class NeurotoxinTraining(AttackerSGD):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.keep = cfg.neurotoxin_keep
        self.mask: np.ndarray | None = None  # (d,) bool over ctx.global_params in order; None: unmasked

    def prepare(self, model: nn.Module, ctx: AttackContext) -> None:
        """The mask from the last global step, and the current global parameters remembered."""
        flat_global = np.concatenate([value.ravel() for value in ctx.global_params.values()])
        previous = ctx.memory.get(MEMORY_KEY)
        ctx.memory[MEMORY_KEY] = flat_global
        if previous is None or previous.shape != flat_global.shape:
            self.mask = None
        else:
            self.mask = neurotoxin_mask(flat_global - previous, self.keep)

    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks | None:
        if self.mask is None:
            return None
        named = dict(model.named_parameters())
        params, frozen, centre = [], [], []
        offset = 0
        for name, value in ctx.global_params.items():
            p = named[name]
            params.append(p)
            # (shape of p) bool: the coordinates outside the mask, which must keep the global value
            frozen.append(torch.from_numpy(~self.mask[offset : offset + value.size].reshape(value.shape))
                          .to(p.device))
            centre.append(torch.as_tensor(value).to(device=p.device, dtype=p.dtype, copy=True))
            offset += value.size

        def before_step(_: nn.Module, step: int) -> None:
            for p, f in zip(params, frozen, strict=True):
                if p.grad is not None:
                    p.grad.masked_fill_(f, 0.0)

        def after_step(_: nn.Module, step: int) -> None:
            for p, f, c in zip(params, frozen, centre, strict=True):
                p.copy_(torch.where(f, c, p))

        return StepHooks(before_step=before_step, after_step=after_step)


@TRAINING_PARTS.register("neurotoxin")
def neurotoxin(cfg: RunConfig) -> NeurotoxinTraining:
    return NeurotoxinTraining(cfg)
