"""FLTrust (Cao et al., NDSS 2021): the server trains a root update g0 on its own root set (the
synthesised server dataset's clean images, never client data); client i gets trust
TS_i = ReLU(cos(g_i, g0)), its update is rescaled to |g0|, and the aggregate is
sum_i TS_i * g_i * |g0| / |g_i| / sum_i TS_i. Zero-trust clients are reported as excluded.

The root update trains on the run's device with the clients' recipe (``amp``, ``augment``), so
that g0 is what a benign client's update would be."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Message

from clipfed.defense.registry import DEFENSES
from clipfed.defense.strategy import DefenseStrategy
from clipfed.defense.updates import flatten
from clipfed.models import create_model
from clipfed.streams import Stream, stream_rng
from clipfed.training import train_local

if TYPE_CHECKING:
    from collections.abc import Callable

    from clipfed.config import RunConfig
    from clipfed.data_synth import ServerDataset
    from clipfed.defense.sampler import PartitionSampler
    from clipfed.runs.report import AggregationReport


def fltrust_weights(updates: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Trust scores ReLU(cos(g_i, g0))."""
    return F.relu(F.cosine_similarity(updates, root.unsqueeze(0), dim=1))


def fltrust_aggregate(updates: torch.Tensor, root: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    trust = fltrust_weights(updates, root)
    rescaled = updates * (root.norm() / updates.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)
    if trust.sum() <= 0:
        return torch.zeros_like(root), trust
    return (trust.unsqueeze(1) * rescaled).sum(0) / trust.sum(), trust


@DEFENSES.register("fltrust")
class FLTrustDefense(DefenseStrategy):
    needs_server_data = True

    def __init__(self, cfg: RunConfig, server_data: ServerDataset,
                 sampler: PartitionSampler | None = None,
                 on_report: Callable[[AggregationReport], None] | None = None) -> None:
        super().__init__(cfg, sampler=sampler, on_report=on_report)
        clean = np.flatnonzero(server_data.clean)
        self.root_images = server_data.images[clean]
        self.root_labels = server_data.labels[clean]
        self.model = create_model(cfg.model, cfg.num_classes).to(self.device)

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        updates, base, keys = self.updates(replies)
        root = self._root(server_round, base, keys)
        self.round_values["aggregate"], trust = fltrust_aggregate(updates, root)
        self.details["trust"] = [round(float(t), 4) for t in trust]
        return [m for m, t in zip(replies, trust, strict=True) if t > 0]

    def _root(self, server_round: int, base: torch.Tensor, keys: list[str]) -> torch.Tensor:
        assert self.global_arrays is not None
        self.model.load_state_dict(self.global_arrays.to_torch_state_dict())
        rng = stream_rng(self.cfg.seed, Stream.FLTRUST_ROOT, server_round)
        rows = rng.choice(len(self.root_labels), size=min(len(self.root_labels), self.cfg.fltrust_root_size),
                          replace=False)
        train_local(self.model, self.root_images[rows], self.root_labels[rows], epochs=1,
                    batch_size=self.cfg.batch_size, lr=self.cfg.lr, momentum=self.cfg.momentum,
                    weight_decay=self.cfg.weight_decay,
                    generator=torch.Generator().manual_seed(int(rng.integers(2**62))),
                    device=self.device, amp=self.cfg.amp, augment=self.cfg.augment)
        return flatten(ArrayRecord(self.model.state_dict()), keys) - base

    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        _, base, keys = self.updates(replies)
        return self.apply_update(self.round_values["aggregate"], base, keys, replies)
