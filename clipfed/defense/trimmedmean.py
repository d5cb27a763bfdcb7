"""Coordinate-wise trimmed mean (Yin et al. 2018), computed by flwr's FedTrimmedAvg; ``trim-beta``
is the fraction cut from each end."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message
from flwr.serverapp.strategy import FedTrimmedAvg

from clipfed.defense.registry import DEFENSES
from clipfed.defense.replies import detached
from clipfed.defense.strategy import DefenseStrategy
from clipfed.flower_internals import aggregate_with


@DEFENSES.register("trimmedmean")
class TrimmedMeanDefense(DefenseStrategy):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        self.beta = self.cfg.trim_beta
        parameters, _ = aggregate_with(FedTrimmedAvg, self, server_round, detached(replies, self.parameter_keys))
        assert parameters is not None
        return self.with_statistics(parameters, replies)
