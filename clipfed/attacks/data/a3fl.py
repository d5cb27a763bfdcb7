"""A3FL (Zhang et al., NeurIPS 2023, "A3FL: Adversarially Adaptive Backdoor Attacks to Federated
Learning"): a patch trigger optimised every round against the global model and an adversarially
unlearned copy of it, so that it survives what the federation will do to the backdoor.

Each attacked round ``prepare`` runs ``a3fl-outer-epochs`` passes over the attacker's shard (batches
of ``batch-size``) of signed-gradient steps on the trigger, ``t <- clamp(t - a3fl-trigger-lr *
sign(grad))``, in the normalised input space, minimising the cross-entropy toward the target of the
global model on every triggered image, plus ``a3fl-adv-weight * sim`` times that of the adversarial
copy. The copy (every ``a3fl-adv-every`` passes, from the second on) is the global model trained
``a3fl-adv-epochs`` epochs to *unlearn* the current trigger (triggered images, true labels; SGD lr
0.01, momentum 0.9, weight decay 5e-4, fixed in the official code); ``sim`` is the mean cosine
similarity of its convolution kernels to the global model's (the paper's lambda = lambda_0 *
sim(copy, global)). The trigger is a patch-area pattern that replaces the pixels under it (the
official ``trigger * mask + (1 - mask) * x``), not an additive full-image one.

Official code (hfzhang31/A3FL, ``main/configs/config.yaml``, ``fl_utils/attacker.py``):
``trigger_size: 5`` (``a3fl-trigger-size``), ``trigger_lr: 0.01`` (``a3fl-trigger-lr``),
``trigger_outter_epochs: 200`` (``a3fl-outer-epochs``), ``dm_adv_epochs: 5`` (``a3fl-adv-epochs``),
``dm_adv_K: 1`` (``a3fl-adv-every``: a fresh copy every pass: the adaptive term is on),
``dm_adv_model_count: 1``, ``noise_loss_lambda: 0.01`` (``a3fl-adv-weight``; 0 turns the adaptive
term off); ``trigger_inner_epochs`` is set there but read nowhere. These are the defaults here; one
round costs about outer x (1 + adv-epochs / adv-every) passes over the shard with two models, which
on 2 CPU cores is minutes for a few hundred images (lower ``a3fl-outer-epochs`` there).

Simplified or changed, and why: the patch sits at ``patch-position`` and starts from BadNets'
``patch-pattern`` (the official code puts it at rows/cols 2-6 and starts from grey 0.5 in the
normalised space); it is clamped to valid pixels [0, 1] (the official clamps to [-2, 2] normalised),
so that the uint8 images can carry it; ``sim`` compares the two models' kernels as the paper states
it (the official code compares the copy's last gradient with the global model's accumulated one);
both models are in eval mode while the trigger steps; each attacker learns its own trigger on its
own shard (the official code has one attacker per round search it) with its own ``poison-rate``.

ASR is measured with the server's re-derivation of the trigger. It lives only in attackers' memory,
and a reply (update and metrics, which a defense reads) must not carry it; so every attacked round
the server runs this same ``prepare`` against the global model those attackers received, on a
shard's worth of public-pool images, with its own stream and memory (``BackdoorEvaluator.
rederive_trigger``). The field evaluates with the attacker's own trigger, which only a simulation can read.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed.attacks.base import AttackContext, DataPoisoning
from clipfed.attacks.data.learned_patch import LearnedPatch, pixel_bounds, stamp
from clipfed.attacks.registry import DATA_PARTS
from clipfed.training import to_tensor

if TYPE_CHECKING:
    from clipfed.config import RunConfig

# The unlearning copy's optimiser, fixed in the official code's get_adv_model.
UNLEARN_LR, UNLEARN_MOMENTUM, UNLEARN_WEIGHT_DECAY = 0.01, 0.9, 5e-4


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose parameters need no gradient (the received model stays
    as it is)."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def unlearned_copy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trigger: torch.Tensor,
                   mask: torch.Tensor, epochs: int, batch_size: int) -> nn.Module:
    """The adversarial copy: ``model`` trained ``epochs`` epochs to give the true labels on
    triggered images, i.e. to unlearn ``trigger``; returned frozen, in eval mode.

    Args:
        model: the global model (not changed).
        x: normalised (N, C, H, W) shard on the model's device; y: int64 (N,) true labels.
        trigger, mask: (1, C, H, W) normalised trigger and (1, 1, H, W) patch mask.
        epochs: passes over the shard; batch_size: images per SGD step.
    """
    adversary = copy.deepcopy(model).train()
    for p in adversary.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(adversary.parameters(), lr=UNLEARN_LR, momentum=UNLEARN_MOMENTUM,
                                weight_decay=UNLEARN_WEIGHT_DECAY)
    triggered = trigger.detach()
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).to(x.device).split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(adversary(stamp(x[batch], triggered, mask)), y[batch]).backward()
            optimizer.step()
    return frozen_copy(adversary)


def kernel_similarity(a: nn.Module, b: nn.Module) -> float:
    """Mean over convolution kernels (4-D parameters) of the cosine similarity of ``a``'s and
    ``b``'s; two models of one architecture."""
    pairs = [(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True) if p.dim() == 4]
    return float(torch.stack([F.cosine_similarity(p.flatten(), q.flatten(), dim=0) for p, q in pairs]).mean())


class A3FL(LearnedPatch):
    memory_key = "a3fl-trigger"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg, cfg.a3fl_trigger_size)
        self.lr = cfg.a3fl_trigger_lr
        self.outer_epochs = cfg.a3fl_outer_epochs
        self.adv_epochs = cfg.a3fl_adv_epochs
        self.adv_every = cfg.a3fl_adv_every
        self.adv_weight = cfg.a3fl_adv_weight
        self.batch_size = cfg.batch_size

    def prepare(self, model: nn.Module, images: np.ndarray, labels: np.ndarray, ctx: AttackContext) -> None:
        """Optimise the trigger, from this node's last one, against ``model`` and its unlearned copy
        on the uint8 (N, H, W, C) ``images`` and their int (N,) ``labels``; keep it in memory.

        Batches are drawn from torch's global generator, which the ClientApp seeds per client and
        round (and the server's re-derivation per round, from its own stream)."""
        self.recall(ctx.memory)
        device = next(model.parameters()).device
        x = to_tensor(images, device)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.pattern = self.from_normalised(self.search(model, x, y))
        self.remember(ctx)

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The optimised (1, C, H, W) normalised trigger, starting from ``self.pattern``.

        Args:
            model: the global model (not changed).
            x: normalised (N, C, H, W) images on the model's device; y: int64 (N,) true labels.
        """
        height, width = x.shape[2], x.shape[3]
        mask = self.mask(height, width, x.device)
        low, high = pixel_bounds(x.device)
        trigger = self.to_normalised(height, width, x.device)
        target = torch.full_like(y, self.target_label)
        global_model = frozen_copy(model)
        adversary: nn.Module | None = None
        weight = 0.0
        for epoch in range(self.outer_epochs):
            if self.adv_weight > 0 and epoch > 0 and epoch % self.adv_every == 0:
                adversary = unlearned_copy(model, x, y, trigger, mask, self.adv_epochs, self.batch_size)
                weight = self.adv_weight * kernel_similarity(adversary, global_model)
            for batch in torch.randperm(len(y)).to(x.device).split(self.batch_size):
                trigger.requires_grad_(True)
                triggered = stamp(x[batch], trigger, mask)
                loss = F.cross_entropy(global_model(triggered), target[batch])
                if adversary is not None:
                    loss = loss + weight * F.cross_entropy(adversary(triggered), target[batch])
                (grad,) = torch.autograd.grad(loss, trigger)
                trigger = torch.maximum(torch.minimum(trigger.detach() - self.lr * grad.sign(), high), low)
        return trigger.detach()


@DATA_PARTS.register("a3fl")
def a3fl(cfg: RunConfig) -> DataPoisoning:
    return A3FL(cfg)
