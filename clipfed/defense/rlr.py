"""Robust Learning Rate (Ozdayi et al., AAAI 2021): per coordinate, if fewer than
``rlr-threshold`` clients agree on the update's sign, the server learning rate flips to -1 there."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Message

from clipfed.defense.registry import DEFENSES
from clipfed.defense.strategy import DefenseStrategy


def rlr_learning_rates(updates: torch.Tensor, threshold: int, server_lr: float = 1.0) -> torch.Tensor:
    """+server_lr where |sum of signs| >= threshold, -server_lr elsewhere."""
    agreement = torch.sign(updates).sum(0).abs()
    return torch.where(agreement >= threshold, server_lr, -server_lr)


@DEFENSES.register("rlr")
class RLRDefense(DefenseStrategy):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        updates, base, keys = self.updates(replies)
        rates = rlr_learning_rates(updates, self.cfg.rlr_threshold)
        self.details["flipped_fraction"] = round(float((rates < 0).float().mean()), 4)
        mean_update = (updates * self.example_weights(replies).unsqueeze(1)).sum(0)
        return self.apply_update(rates * mean_update, base, keys, replies)
