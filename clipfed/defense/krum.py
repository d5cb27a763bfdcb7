"""Krum and Multi-Krum (Blanchard et al. 2017), selected by flwr's own ``select_multikrum``.

``krum-f`` is the number of attackers the rule assumes (-1: the configured ``num-malicious``);
Multi-Krum keeps ``multikrum-m`` updates (-1: n - f) and averages them.

flwr's rule is given float64 *updates* (reply minus global model), not the float32 weights the
replies hold: its ``compute_distances`` forms ||x||^2 + ||y||^2 - 2 x.y, which over float32 weights
subtracts numbers of the size of |w|^2 (143 for the initial CNN) to get distances of the size of
|Δ|^2. With updates 1% of the mean weight magnitude the rounding error measured 2.5% of the
distance, ten times the spread between similar honest clients, so the rounding (which differs
between CPUs' BLAS kernels) chose the update. Distances are the same for weights and updates; over
float64 updates the formula's relative error is about 1e-16 * |Δ|^2 / distance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy.multikrum import select_multikrum

from clipfed.defense.registry import DEFENSES
from clipfed.defense.strategy import DefenseStrategy

SelectionRule = Callable[[list[RecordDict], int, int], list[RecordDict]]


def multikrum_over_updates(base: ArrayRecord, keys: list[str]) -> SelectionRule:
    """flwr's ``select_multikrum`` scoring float64 updates; it returns the contents it was given.

    Args:
        base: The global model the clients started from.
        keys: The parameter keys the distances run over (every content holds them).

    Returns:
        A selection rule with flwr's signature ``(contents, num_malicious_nodes,
        num_nodes_to_select) -> selected contents`` (the same objects, in the order flwr's rule
        ranks them), usable as flwr's ``Bulyan(selection_rule=...)``.
    """
    origin = [np.asarray(base[k].numpy(), dtype=np.float64) for k in keys]

    def select_multikrum_over_updates(contents: list[RecordDict], num_malicious_nodes: int,
                                      num_nodes_to_select: int) -> list[RecordDict]:
        name = next(iter(contents[0].array_records))

        def update(content: RecordDict) -> RecordDict:
            arrays = content.array_records[name]
            return RecordDict({name: ArrayRecord([np.asarray(arrays[k].numpy(), dtype=np.float64) - o
                                                  for k, o in zip(keys, origin, strict=True)])})

        updates = [update(c) for c in contents]
        content_of = {id(u): c for c, u in zip(contents, updates, strict=True)}
        return [content_of[id(u)] for u in select_multikrum(updates, num_malicious_nodes, num_nodes_to_select)]

    return select_multikrum_over_updates


class _KrumFamily(DefenseStrategy):
    def assumed_attackers(self) -> int:
        return self.cfg.num_malicious if self.cfg.krum_f < 0 else self.cfg.krum_f

    def to_select(self, n: int) -> int:
        raise NotImplementedError

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        keys = self.parameter_keys  # distances over parameters, not statistics; raises without a global model
        assert self.global_arrays is not None
        rule = multikrum_over_updates(self.global_arrays, keys)
        chosen = rule([m.content for m in replies], self.assumed_attackers(), self.to_select(len(replies)))
        chosen_ids = {id(c) for c in chosen}
        return [m for m in replies if id(m.content) in chosen_ids]


@DEFENSES.register("krum")
class KrumDefense(_KrumFamily):
    def to_select(self, n: int) -> int:
        return 1


@DEFENSES.register("multikrum")
class MultiKrumDefense(_KrumFamily):
    def to_select(self, n: int) -> int:
        m = self.cfg.multikrum_m
        return max(1, n - self.assumed_attackers()) if m < 0 else min(m, n)
