"""Norm-difference clipping and weak differential privacy (Sun et al. 2019), and CRFL (Xie et al.,
ICML 2021): bound each update's norm by ``clip-norm``; weak DP adds N(0, dp-noise^2) to the mean
update; CRFL clips the *global model*'s norm to ``crfl-clip`` and adds N(0, crfl-noise^2)
parameter-smoothing noise to it every round."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Message

from clipfed.defense.registry import DEFENSES
from clipfed.defense.strategy import DefenseStrategy
from clipfed.defense.updates import clip_to_norm


class _Clipped(DefenseStrategy):
    def noise(self, server_round: int, like: torch.Tensor, sigma: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.cfg.seed * 1009 + server_round)
        return torch.randn(like.shape, generator=generator) * sigma

    def clipped_mean(self, replies: list[Message]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        updates, base, keys = self.updates(replies)
        weights = self.example_weights(replies).unsqueeze(1)
        return (clip_to_norm(updates, self.cfg.clip_norm) * weights).sum(0), base, keys


@DEFENSES.register("normclip")
class NormClipDefense(_Clipped):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        mean_update, base, keys = self.clipped_mean(replies)
        return self.apply_update(mean_update, base, keys, replies)


@DEFENSES.register("weakdp")
class WeakDPDefense(_Clipped):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        mean_update, base, keys = self.clipped_mean(replies)
        noisy = mean_update + self.noise(server_round, mean_update, self.cfg.dp_noise)
        return self.apply_update(noisy, base, keys, replies)


@DEFENSES.register("crfl")
class CRFLDefense(_Clipped):
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        updates, base, keys = self.updates(replies)
        model = base + (updates * self.example_weights(replies).unsqueeze(1)).sum(0)
        model = clip_to_norm(model.unsqueeze(0), self.cfg.crfl_clip)[0]
        model = model + self.noise(server_round, model, self.cfg.crfl_noise)
        return self.apply_update(model - base, base, keys, replies)
