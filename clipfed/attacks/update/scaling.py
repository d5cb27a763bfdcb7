"""Model replacement (Bagdasaryan et al., AISTATS 2020, "How To Backdoor Federated Learning").

The malicious update is multiplied by ``boost-factor`` (the paper's gamma, ideally the number of
clients over the server learning rate, n / eta) so that it survives averaging and the global model
is replaced by the backdoored one. The official code (ebagdasa/backdoor_federated_learning) scales
``scale_weights: 100`` for 100 participants per round; the default 5.0 here suits 10-20 clients per
round. BatchNorm statistics are not scaled (they are not parameters).
"""

from __future__ import annotations

from clipfed.attacks.base import AttackContext, Params, UpdatePart
from clipfed.attacks.registry import UPDATE_PARTS
from clipfed.config import RunConfig


class Scaling(UpdatePart):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.boost = cfg.boost_factor

    def craft(self, local_params: Params, ctx: AttackContext) -> Params:
        base = ctx.global_params
        return {key: base[key] + self.boost * (value - base[key]) for key, value in local_params.items()}


@UPDATE_PARTS.register("scaling")
def scaling(cfg: RunConfig) -> UpdatePart:
    return Scaling(cfg)
