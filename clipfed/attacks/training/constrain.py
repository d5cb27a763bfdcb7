"""Constrain-and-scale, its training half (Bagdasaryan et al., AISTATS 2020, "How To Backdoor
Federated Learning"): the attacker minimises ``alpha * L_class + (1 - alpha) * L_ano``, where
``L_ano`` is the anomaly statistic a defense checks, so the model it trains is backdoored and close
to the global one; the ``constrain-scale`` shorthand then boosts it (the ``scaling`` update part,
``boost-factor``), which is the paper's attack.

``L_ano`` is what the official code (ebagdasa/backdoor_federated_learning, ``training.py``) uses
at every poisoning step: ``helper.model_dist_norm_var(model, target_params_variables)``, the L2
norm (not squared) of the difference between the model's parameters and the global model's, over
all of them together, so ``loss = alpha_loss * class_loss + (1 - alpha_loss) * distance_loss``.
Its helper also defines cosine losses (``cos_sim_loss``, ``model_cosine_similarity``), which the
training loop never calls; they are not implemented here. Its configs (``utils/params.yaml``) set
``alpha_loss: 1.0``, which switches the term off, with ``poison_lr`` 0.05, momentum 0.9,
``poison_decay`` 0.005 and ``scale_weights`` 100 for 100 participants. Since the official value
disables the constraint, ``constrain-alpha`` 0.7 is ours: the task keeps most of the weight, so the
backdoor still trains within the attacker's step budget, while the distance term, whose gradient
has unit norm, pulls every step back towards the global model by 0.3 x lr. The attacker's own
schedule (``attack-local-steps``, ``attack-epochs``, ``attack-lr``) is the ``sgd`` part's.

How the objective enters ``train_local``: ``StepHooks.extra_loss`` is added to the batch's
cross-entropy, so this part returns ``(alpha - 1) * CE + (1 - alpha) * distance`` (CE recomputed
from the same logits) and each step minimises ``alpha * CE + (1 - alpha) * distance`` exactly, at
the schedule's lr, as the official code does; the reported training loss is that objective. The
distance's gradient at distance 0 (the first step) is 0 (``torch.linalg.vector_norm``'s
subgradient), not NaN. BatchNorm statistics are buffers, outside the distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipfed.attacks.base import AttackContext, StepHooks
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.attacks.training.sgd import AttackerSGD
from clipfed.config import RunConfig


def distance_to(params: Sequence[torch.Tensor], centre: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 distance (a differentiable scalar, in parameter units) between matching tensors
    ``params`` and ``centre``, over all of them together."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p - c)
                                                 for p, c in zip(params, centre, strict=True)]))


class ConstrainTraining(AttackerSGD):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.alpha = cfg.constrain_alpha

    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks:
        params, centre = ctx.anchored(model)
        alpha = self.alpha

        def extra_loss(_: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            return (alpha - 1.0) * F.cross_entropy(logits, y) + (1.0 - alpha) * distance_to(params, centre)

        return StepHooks(extra_loss=extra_loss)


@TRAINING_PARTS.register("constrain")
def constrain(cfg: RunConfig) -> ConstrainTraining:
    return ConstrainTraining(cfg)
