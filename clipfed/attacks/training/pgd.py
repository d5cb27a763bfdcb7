"""PGD, norm-bounded training (Sun et al. 2019, "Can You Really Backdoor Federated Learning?";
Wang et al., NeurIPS 2020, "Attack of the Tails").

The attacker trains on its poisoned shard with SGD (the ``sgd`` part's schedule: its own steps,
epochs and lr) and every ``pgd-every`` steps projects its trainable parameters back onto the L2
ball of radius ``pgd-eps`` around the received global model, so that its update never exceeds
the norm a norm-clipping defense allows; the trained model is projected once more at the end. With
``attack-update='scaling'`` the projected update is then boosted (PGD with model replacement,
the paper's strongest variant). The official code (ksreenivasan/OOD_Federated_Learning,
``run_simulated_averaging.sh``) uses ``--eps 2 --project_frequency 10``, the defaults here.
The ball is over every trainable parameter together (BatchNorm statistics are not parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clipfed.attacks.base import AttackContext, StepHooks
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.attacks.training.sgd import AttackerSGD
from clipfed.config import RunConfig


def l2_distance(params: Sequence[torch.Tensor], centre: Sequence[torch.Tensor]) -> float:
    """The L2 distance (parameter units) between matching tensors ``params`` and ``centre``, over
    all of them together."""
    return float(torch.stack([(p - c).pow(2).sum() for p, c in zip(params, centre, strict=True)]).sum().sqrt())


def project_l2(params: Sequence[torch.Tensor], centre: Sequence[torch.Tensor], eps: float) -> float:
    """Move ``params`` in place onto the L2 ball of radius ``eps`` around ``centre`` when outside it.

    Args:
        params, centre: matching tensors (the model's trainable parameters and the global ones).
        eps: the radius, in the parameters' own units.
    Returns:
        The distance before projection.
    """
    distance = l2_distance(params, centre)
    if distance > eps:
        scale = eps / distance
        for p, c in zip(params, centre, strict=True):
            p.copy_(c + (p - c) * scale)
    return distance


class PGD(AttackerSGD):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.eps = cfg.pgd_eps
        self.every = cfg.pgd_every

    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks:
        params, centre = ctx.anchored(model)

        def after_step(_: nn.Module, step: int) -> None:
            if step % self.every == 0:
                project_l2(params, centre, self.eps)

        def after_training(_: nn.Module) -> None:
            project_l2(params, centre, self.eps)

        return StepHooks(after_step=after_step, after_training=after_training)


@TRAINING_PARTS.register("pgd")
def pgd(cfg: RunConfig) -> PGD:
    return PGD(cfg)
