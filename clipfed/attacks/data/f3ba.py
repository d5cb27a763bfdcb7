"""F3BA, Focused-Flip Federated Backdoor Attack (Fang and Chen, AAAI 2023, "On the Vulnerability of
Backdoor Defenses for Federated Learning"): the data part, which picks the weights to flip and
co-optimises the trigger with them. The ``f3ba`` training part (``clipfed/attacks/training/f3ba.py``)
makes the flips; ``attack='f3ba'`` is the two together.

Each attacked round ``prepare``, against the received global model w_t:

1. **Candidates.** In the first convolution layer (the layer the trigger meets), the ``f3ba-share``
   of its weights with the lowest importance: the first-order loss change of removing a weight,
   ``-dL/dw * w`` (signed, movement pruning's score: a weight the task pushes towards zero scores
   below 0 and goes first). The official code (``kernel_selection: movement``) estimates it as
   ``(w_t - w_{t-1}) * w_t``, the last global step standing in for ``-lr * dL/dw``, where w_{t-1}
   is the global model this node received in its previous attacked turn (kept in memory; with
   sampled clients the step spans every round since then, a longer movement, as movement pruning
   accumulates its score over steps). A node's first attacked turn has no w_{t-1}: there the score
   is measured directly, ``-g * w_t`` with g the gradient of the cross-entropy at w_t summed over a
   few batches of the node's own clean images (``clipfed.attacks.gradient.clean_gradient``). That
   is the quantity the movement score estimates, up to the positive factor ``lr`` (which does not
   change the ranking), with the gradient of the attacker's data at w_t in place of the benign
   clients' aggregated step; it is not the magnitude ``|w * dL/dw|`` of Taylor pruning, which
   would rank a weight whose removal lowers the loss as important. So every turn flips the
   ``f3ba-share``. The official code instead sets w_{t-1} to the model the attacking client was
   constructed with (``Client.__init__``, before any round), so its first turn ranks by the
   movement since then; a node here has no such model, only what it receives when sampled.
2. **Flip signs.** Each candidate's sign is set to that of the trigger pattern (normalised, resized
   bilinearly to the kernel, rescaled into each filter's [min, max] range): the filter becomes a
   detector of the trigger.
3. **Trigger.** Two passes over a random 20% of the shard (the official handcraft split) of gradient
   ascent, step 0.1 in the normalised space, on ``|| mean(relu(conv(x + t))) - mean(relu(conv(x))) ||^2``
   (means over images and channels, per position) through the flipped layer, the signs re-aligned to
   the pattern at every step: the trigger is shaped to activate the flipped weights.

The plan (``+1``/``-1`` at the candidates, 0 elsewhere, over the layer's flattened weight) goes to
``ctx.memory['f3ba-flips']`` for the training part; the trigger to ``'f3ba-trigger'``.

Official code (jinghuichen/Focused-Flip-Federated-Backdoor-Attack, ``Params.py``, ``Attacks.py``,
``Client.py``): ``kernel_selection: movement``, ``conv_rate: 0.02`` (``f3ba-share``),
``fc_rate: 0.001``, ``flip_factor: 1``, 2 trigger epochs at step 0.1 on the 20% handcraft split.

Simplified here: only the first convolution layer is flipped (the official code also flips its
candidates in every deeper convolution layer, aligned to the activation difference the trigger
causes in the layer before, and every third round in the fully connected layers, ``fc_rate``);
the activation is ``relu(conv)`` without the layer's BatchNorm; the patch is BadNets'
(``patch-size``, ``patch-position``, starting from ``patch-pattern``; the official one is a 3x3
random patch at rows 3-5, cols 23-25); the attacker trains with the run's poisoning
(``poison-rate``) rather than the official 0.6 clean + 0.4 backdoor loss.

ASR is measured with the server's re-derivation of the trigger, as for A3FL
(``clipfed/attacks/data/a3fl.py`` says why): the server runs this ``prepare`` on public-pool images
(and their labels, for the first round's gradient) against the global model each attacked round,
with its own memory of w_{t-1}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed.attacks.base import AttackContext, DataPoisoning
from clipfed.attacks.data.learned_patch import LearnedPatch, pixel_bounds, stamp
from clipfed.attacks.gradient import clean_gradient
from clipfed.attacks.registry import DATA_PARTS
from clipfed.training import to_tensor

if TYPE_CHECKING:
    from clipfed.config import RunConfig

FLIPS_KEY = "f3ba-flips"  # the flip plan the training part applies: float32 (weights of the layer,)
PREVIOUS_KEY = "f3ba-previous-layer"  # the layer's weights in the last received global model
TRIGGER_EPOCHS, TRIGGER_STEP, HANDCRAFT_SHARE = 2, 0.1, 0.2  # the official trigger optimisation


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's first convolution layer (module order), where F3BA flips weights."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no convolution layer for F3BA to flip")


def movement_importance(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The official ``movement`` importance ``(current - previous) * current`` of the flattened (d,)
    layer weights of this and the previous global model."""
    return (current - previous) * current


def gradient_importance(current: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """``-gradient * current``: the first-order loss change of removing each of the (d,) weights,
    what the movement importance estimates, from the (d,) loss gradient at ``current``."""
    return -gradient * current


def candidate_mask(importance: np.ndarray, share: float) -> np.ndarray:
    """(d,) bool: the ``round(share * d)`` weights of the lowest (d,) ``importance`` (ties broken by
    position)."""
    chosen = np.zeros(importance.size, dtype=bool)
    chosen[np.argsort(importance, kind="stable")[: round(share * importance.size)]] = True
    return chosen


def aligned_signs(weight: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(O, I, k, k) signs (+1/-1) the trigger asks of each weight of a convolution layer.

    The (C, s, s) normalised ``pattern`` (C = I) is resized bilinearly to k x k and rescaled from its
    own [min, max] into each filter's [min, max] of ``weight``; its sign there is the sign asked for
    (a zero asks for +1). A flat pattern maps onto each filter's minimum.
    """
    k = weight.shape[-1]
    resized = F.interpolate(pattern[None], size=(k, k), mode="bilinear", align_corners=False)[0]
    unit = (resized - resized.min()) / (resized.max() - resized.min()).clamp_min(1e-12)  # (I, k, k) in [0, 1]
    low = weight.amin(dim=(1, 2, 3), keepdim=True)
    high = weight.amax(dim=(1, 2, 3), keepdim=True)
    scaled = unit[None] * (high - low) + low  # (O, I, k, k)
    return torch.where(scaled >= 0, 1.0, -1.0).to(weight.dtype)


class F3BA(LearnedPatch):
    memory_key = "f3ba-trigger"

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg, cfg.patch_size)
        self.share = cfg.f3ba_share
        self.batch_size = cfg.batch_size

    def prepare(self, model: nn.Module, images: np.ndarray, labels: np.ndarray, ctx: AttackContext) -> None:
        """Choose the candidates in ``model``'s first convolution layer, co-optimise the trigger on
        the uint8 (N, H, W, C) ``images`` and leave the flip plan in memory. The int (N,) ``labels``
        serve the first turn's gradient importance only.

        The gradient's batches, the handcraft subset and the batch order come from torch's global
        generator, which the ClientApp seeds per client and round (and the server's re-derivation
        per round)."""
        self.recall(ctx.memory)
        conv = first_conv(model)
        weight = conv.weight.detach()
        current = weight.cpu().numpy().ravel().astype(np.float32)
        previous = ctx.memory.get(PREVIOUS_KEY)
        ctx.memory[PREVIOUS_KEY] = current
        if previous is not None and previous.shape == current.shape:
            importance = movement_importance(current, previous)
        else:
            name = next(n for n, p in model.named_parameters() if p is conv.weight)
            gradient = clean_gradient(model, images, labels, self.batch_size)[name]
            importance = gradient_importance(current, gradient.cpu().numpy().ravel().astype(np.float32))
        chosen = torch.from_numpy(candidate_mask(importance, self.share)).to(weight.device).view_as(weight)
        subset = torch.randperm(len(images))[: max(1, round(HANDCRAFT_SHARE * len(images)))]
        trigger = self.co_optimise(conv, chosen, to_tensor(images[np.sort(subset.numpy())], weight.device))
        self.pattern = self.from_normalised(trigger)
        signs = aligned_signs(weight, self.region(trigger))
        ctx.memory[FLIPS_KEY] = torch.where(chosen, signs, 0.0).cpu().numpy().ravel().astype(np.float32)
        self.remember(ctx)

    def region(self, trigger: torch.Tensor) -> torch.Tensor:
        """The (C, s, s) patch of a (1, C, H, W) normalised trigger."""
        row, col = self.origin(trigger.shape[2], trigger.shape[3])
        return trigger[0, :, row : row + self.size, col : col + self.size]

    def co_optimise(self, conv: nn.Conv2d, chosen: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The (1, C, H, W) normalised trigger after the official two passes of ascent.

        Args:
            conv: the global model's first convolution layer (not changed).
            chosen: bool, ``conv.weight``'s shape: the candidates.
            x: normalised (n, C, H, W) handcraft images on ``conv``'s device.
        """
        height, width = x.shape[2], x.shape[3]
        mask = self.mask(height, width, x.device)
        low, high = pixel_bounds(x.device)
        trigger = self.to_normalised(height, width, x.device)
        weight = conv.weight.detach()
        bias = None if conv.bias is None else conv.bias.detach()

        def layer(inputs: torch.Tensor, kernels: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
            return F.conv2d(inputs, kernels, offsets, conv.stride, conv.padding, conv.dilation, conv.groups)

        for _ in range(TRIGGER_EPOCHS):
            for batch in torch.randperm(len(x)).to(x.device).split(self.batch_size):
                flipped = torch.where(chosen, aligned_signs(weight, self.region(trigger)) * weight.abs(), weight)
                trigger.requires_grad_(True)
                clean = F.relu(layer(x[batch], flipped, bias)).mean(dim=(0, 1))
                poisoned = F.relu(layer(stamp(x[batch], trigger, mask), flipped, bias)).mean(dim=(0, 1))
                (grad,) = torch.autograd.grad((poisoned - clean).pow(2).sum(), trigger)
                trigger = torch.maximum(torch.minimum(trigger.detach() + TRIGGER_STEP * grad, high), low)
        return trigger.detach()


@DATA_PARTS.register("f3ba")
def f3ba(cfg: RunConfig) -> DataPoisoning:
    return F3BA(cfg)
