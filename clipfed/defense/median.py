"""Coordinate-wise median (Yin et al. 2018), computed by flwr's FedMedian."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import FedMedian

from clipfed.defense.registry import DEFENSES
from clipfed.defense.replies import detached
from clipfed.defense.strategy import DefenseStrategy
from clipfed.flower_internals import aggregate_with


@DEFENSES.register("median")
class MedianDefense(DefenseStrategy):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        parameters, _ = aggregate_with(FedMedian, self, server_round, detached(replies, self.parameter_keys))
        assert parameters is not None
        return self.with_statistics(parameters, replies)
