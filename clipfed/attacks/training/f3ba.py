"""F3BA's flips (Fang and Chen, AAAI 2023, "On the Vulnerability of Backdoor Defenses for Federated
Learning"): the training part, which sets the chosen weights of the first convolution layer to the
signs the ``f3ba`` data part planned (``clipfed/attacks/data/f3ba.py`` has the method, the paper's
and the official code's defaults) and trains the rest of the model around them.

The attacker trains with the ``sgd`` part's schedule (its own steps, epochs, lr). After every SGD
step, and once after the last, each chosen weight ``w`` becomes ``sign * |w|``: the first step lands
the flips, the later ones keep them while the other weights adapt, so the update sent carries exactly
the planned signs on the chosen weights (the weights whose sign the plan changes are flipped, the
others keep theirs). The official code flips once, before local training, and lets training move the
flipped weights afterwards; holding them is the simplification here, so that the share flipped is
the share sent. The plan is what the data part left in ``ctx.memory['f3ba-flips']`` this round (in
every turn, the first included); with another data part there is none, and with an ``f3ba-share``
that rounds to no weight it flips nothing: the part then trains as ``sgd``.
"""

from __future__ import annotations

import torch
from torch import nn

from clipfed.attacks.base import AttackContext, StepHooks
from clipfed.attacks.data.f3ba import FLIPS_KEY, first_conv
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.attacks.training.sgd import AttackerSGD
from clipfed.config import RunConfig


class FocusedFlip(AttackerSGD):
    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks | None:
        plan = ctx.memory.get(FLIPS_KEY)
        weight = first_conv(model).weight
        if plan is None or plan.size != weight.numel() or not plan.any():
            return None
        signs = torch.as_tensor(plan).to(device=weight.device, dtype=weight.dtype).view(weight.shape)
        chosen = signs != 0

        def hold(_: nn.Module, step: int = 0) -> None:
            weight[chosen] = signs[chosen] * weight[chosen].abs()

        return StepHooks(after_step=hold, after_training=hold)


@TRAINING_PARTS.register("f3ba")
def f3ba(cfg: RunConfig) -> FocusedFlip:
    return FocusedFlip(cfg)
