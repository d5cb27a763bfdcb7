"""Krum and Multi-Krum (Blanchard et al. 2017), selected by flwr's own ``select_multikrum``.

``krum-f`` is the number of attackers the rule assumes (-1: the configured ``num-malicious``);
Multi-Krum keeps ``multikrum-m`` updates (-1: n - f) and averages them.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.serverapp.strategy.multikrum import select_multikrum

from clipfed.defense.registry import DEFENSES
from clipfed.defense.replies import detached
from clipfed.defense.strategy import DefenseStrategy


class _KrumFamily(DefenseStrategy):
    def assumed_attackers(self) -> int:
        return self.cfg.num_malicious if self.cfg.krum_f < 0 else self.cfg.krum_f

    def to_select(self, n: int) -> int:
        raise NotImplementedError

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        views = detached(replies, self.parameter_keys)  # distances over parameters, not statistics
        contents = [m.content for m in views]
        chosen = select_multikrum(contents, self.assumed_attackers(), self.to_select(len(replies)))
        chosen_ids = {id(c) for c in chosen}
        return [m for m, v in zip(replies, views, strict=True) if id(v.content) in chosen_ids]


@DEFENSES.register("krum")
class KrumDefense(_KrumFamily):
    def to_select(self, n: int) -> int:
        return 1


@DEFENSES.register("multikrum")
class MultiKrumDefense(_KrumFamily):
    def to_select(self, n: int) -> int:
        m = self.cfg.multikrum_m
        return max(1, n - self.assumed_attackers()) if m < 0 else min(m, n)
