"""FoolsGold (Fung et al., RAID 2020): clients whose update *histories* are too similar (sybils
pushing one objective) are down-weighted. History is kept per partition id across rounds, in the
strategy (it is part of what a checkpoint must hold). Weight-zero clients are reported as excluded;
all weights go into the round's details."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Message

from clipfed.defense.registry import DEFENSES
from clipfed.defense.replies import partition_id
from clipfed.defense.strategy import DefenseStrategy

if TYPE_CHECKING:
    from collections.abc import Callable

    from clipfed.config import RunConfig
    from clipfed.defense.sampler import PartitionSampler
    from clipfed.runs.report import AggregationReport


def foolsgold_weights(histories: torch.Tensor, confidence: float = 1.0) -> torch.Tensor:
    """The FoolsGold weights (Algorithm 1 of the paper) for (n, d) update histories."""
    n = len(histories)
    if n < 2:
        return torch.ones(n)
    unit = F.normalize(histories.double(), dim=1)
    cs = unit @ unit.T
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    # Pardoning: where v[j] > v[i], client i is less sybil-like than j, so scale cs[i, j] down.
    pardon = v.unsqueeze(0) > v.unsqueeze(1)
    cs = torch.where(pardon, cs * v.unsqueeze(1) / v.unsqueeze(0), cs)
    alpha = (1 - cs.max(dim=1).values).clamp(0, 1)
    alpha = alpha / alpha.max().clamp_min(1e-12)
    alpha = torch.where(alpha >= 1, torch.full_like(alpha, 0.99), alpha)
    logit = confidence * (torch.log(alpha / (1 - alpha)) + 0.5)
    return torch.nan_to_num(logit, neginf=0.0, posinf=1.0).clamp(0, 1).float()


@DEFENSES.register("foolsgold")
class FoolsGoldDefense(DefenseStrategy):
    def __init__(self, cfg: RunConfig, sampler: PartitionSampler | None = None,
                 on_report: Callable[[AggregationReport], None] | None = None) -> None:
        super().__init__(cfg, sampler=sampler, on_report=on_report)
        self.history: dict[int, torch.Tensor] = {}

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        updates, _, _ = self.updates(replies)
        pids = [partition_id(m) for m in replies]
        for pid, update in zip(pids, updates, strict=True):
            self.history[pid] = self.history.get(pid, torch.zeros_like(update)) + update
        weights = self.round_values["weights"] = foolsgold_weights(torch.stack([self.history[p] for p in pids]))
        self.details["weights"] = [round(float(w), 4) for w in weights]
        return [m for m, w in zip(replies, weights, strict=True) if w > 0]

    def state_dict(self) -> dict[str, Any]:
        return {"history": {pid: h.clone() for pid, h in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = {int(pid): h.clone() for pid, h in state["history"].items()}

    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        updates, base, keys = self.updates(replies)
        weights = self.round_values["weights"]
        kept = weights[weights > 0]
        return self.apply_update((kept.unsqueeze(1) * updates).sum(0) / kept.sum(), base, keys, replies)
