"""Bulyan (El Mhamdi et al. 2018), computed by flwr's Bulyan: Multi-Krum selection, then a
coordinate-wise trimmed mean around the median. Needs n >= 4f + 3 updates per round; with fewer
the round keeps the previous model and the report says why. The Multi-Krum selection scores
float64 updates, as Krum's does (``krum.multikrum_over_updates`` says why)."""

from __future__ import annotations

from logging import WARNING

from flwr.app import ArrayRecord, Message
from flwr.common.logger import log
from flwr.serverapp.strategy import Bulyan

from clipfed.defense.krum import multikrum_over_updates
from clipfed.defense.registry import DEFENSES
from clipfed.defense.replies import detached
from clipfed.defense.strategy import DefenseStrategy
from clipfed.flower_internals import aggregate_with


@DEFENSES.register("bulyan")
class BulyanDefense(DefenseStrategy):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        f = self.cfg.num_malicious if self.cfg.krum_f < 0 else self.cfg.krum_f
        if len(replies) < 4 * f + 3:
            reason = f"Bulyan needs >= 4f+3 = {4 * f + 3} updates, got {len(replies)}"
            log(WARNING, "Round %d: %s; keeping the previous model", server_round, reason)
            self.details["skipped"] = reason
            return None
        self.num_malicious_nodes = f
        keys = self.parameter_keys  # raises when no global model was recorded this round
        assert self.global_arrays is not None
        self.selection_rule = multikrum_over_updates(self.global_arrays, keys)
        parameters, _ = aggregate_with(Bulyan, self, server_round, detached(replies, keys))
        assert parameters is not None
        return self.with_statistics(parameters, replies)
