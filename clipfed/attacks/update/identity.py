"""The ``none`` update part: the trained parameters are sent as they are (a pure data attack)."""

from __future__ import annotations

from clipfed.attacks.base import AttackContext, Params, UpdatePart
from clipfed.attacks.registry import UPDATE_PARTS
from clipfed.config import RunConfig


class Unchanged(UpdatePart):
    def craft(self, local_params: Params, ctx: AttackContext) -> Params:
        return local_params


@UPDATE_PARTS.register("none")
def unchanged(cfg: RunConfig) -> UpdatePart:
    return Unchanged(cfg)
