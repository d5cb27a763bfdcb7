"""Neurotoxin as its paper trains it (Zhang et al., ICML 2022, "Neurotoxin: Durable Backdoors in
Federated Learning"): every SGD step is restricted to the coordinates benign clients rarely change.

Which coordinates: the ``neurotoxin-keep`` fraction with the smallest magnitude in the gradient of
the cross-entropy at the received global model, summed over a few batches of the attacker's own
clean shard (``clipfed.attacks.gradient.clean_gradient``, ``AttackContext.clean_images``), over
all trainable parameters together (``neurotoxin_mask``). That gradient is the attacker's proxy
for the benign update of this round: the largest-magnitude coordinates are the ones honest
clients will overwrite, and they are masked out. ``prepare`` computes it afresh every attacked
round against the model just received, so it needs no memory: an attacker's first turn is masked
like any other, and no turn uses an older global model.

The official code (jhcknzzm/Federated-Learning-Backdoor, ``FL_Backdoor_CV``) does the same:
``grad_mask_cv`` accumulates the gradient of the current global model on clean data (30 sampled
clean participants' loaders there; the attacker's own shard here), keeps the
``int(d * gradmask_ratio)`` coordinates of the smallest |gradient| (``topk`` of ``-|g|``) over all
layers (``--aggregate_all_layer 1``), multiplies every gradient by that 0/1 mask after ``backward``
(``apply_grad_mask``) and steps SGD with ``poison_momentum`` 0.9 and ``poison_decay`` 0.005
(``utils/cifar10_params.yaml``; ``poison_lr`` 0.05 there, ``--poison_lr 0.02`` in its CIFAR
scripts). ``gradmask_ratio`` is the fraction of coordinates *kept* ("the proportion of the gradient
retained"; 1, the default, computes no mask; the CIFAR scripts run 0.95-0.99): ``neurotoxin-keep``
here. Its default 0.9 is this project's (it masks more than those scripts do). The gradient is
computed in training mode on a copy (BatchNorm with batch statistics, as the official
``model.train()``), so the received model's running statistics are not touched.

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
from clipfed.attacks.gradient import clean_gradient
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.attacks.training.sgd import AttackerSGD
from clipfed.attacks.update.neurotoxin import neurotoxin_mask
from clipfed.config import RunConfig


class NeurotoxinTraining(AttackerSGD):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.keep = cfg.neurotoxin_keep
        self.mask: np.ndarray | None = None  # (d,) bool over ctx.global_params in order, set by prepare

    def prepare(self, model: nn.Module, ctx: AttackContext) -> None:
        """The mask from the gradient of ``model`` (the received global one) on the clean shard.

        Raises:
            ValueError: a context without the attacker's clean shard.
        """
        if ctx.clean_images is None or ctx.clean_labels is None:
            raise ValueError("the neurotoxin training part needs the attacker's clean shard "
                             "(AttackContext.clean_images)")
        gradient = clean_gradient(model, ctx.clean_images, ctx.clean_labels, self.cfg.batch_size)
        self.mask = neurotoxin_mask(np.concatenate([gradient[name].cpu().numpy().ravel()
                                                    for name in ctx.global_params]), self.keep)

    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks | None:
        if self.mask is None:
            raise RuntimeError("the neurotoxin training part's hooks come after its prepare, which sets the mask")
        params, centre = ctx.anchored(model)
        # per parameter, (its shape) bool: the coordinates outside the mask, which keep the global value
        bounds = np.cumsum([0, *(p.numel() for p in params)])
        frozen = [torch.from_numpy(~self.mask[start:stop].reshape(p.shape)).to(p.device)
                  for p, start, stop in zip(params, bounds[:-1], bounds[1:], strict=True)]

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
