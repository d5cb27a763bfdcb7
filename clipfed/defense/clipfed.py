"""CLIP-Fed (Gai et al. 2025): teacher-guided filtering before, and CLIP alignment after, FedAvg.

Pre-aggregation (``select``): score every update on the server dataset with the signals of
``clipfed.defense.scoring`` (all of them are recorded in the round's ``details["scores"]``), combine
the robust z-scores of the ``clipfed-signals`` ones, fold each client's combined score into its
running score (an exponential moving average over the rounds it was sampled in, weight
``clipfed-history-weight`` on this round; 1: this round alone), exclude clients whose running score
is above ``clipfed-z-threshold`` or, with ``clipfed-low-signals``, whose running score of lowness on
those signals is above ``clipfed-low-threshold`` (never more than half), then clip the kept updates
to their median norm.
Post-aggregation (``combine``): fine-tune the aggregate on the server dataset (clean and
trigger-like copies, all with clean labels) with

    lambda_kl * T^2 * KL(softmax(z_teacher / T) || softmax(z_model / T))
  + lambda_pc * CE(normalize(P f(x)) @ prototypes^T / tau, y)   (+ lambda_ce * CE(z_model, y))

where ``f`` are the model's penultimate features and ``P`` a projection head into the teacher's
embedding space that lives on the server and persists across rounds. Teacher logits and
prototypes come from the server-dataset artifact: computed once, never recomputed here. With
``clipfed-kd-target = "better-of"`` each image's target is chosen by ``kd_targets``.

The whole server step runs on the strategy's ``device``: the probe, the fine-tuning set, the
teacher's logits and prototypes, the model and the projector are moved there once, here; client
models are scored in batched passes there (``scoring.views``); the aggregate comes back to the CPU
as an ArrayRecord. On CUDA with ``amp`` the passes and fine-tuning steps run under bf16
autocast. The fine-tuning batches are drawn with a CPU generator whatever the device, so a CPU
run draws, and computes, exactly what it did before the device existed, and a CUDA run draws the
same rows.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from clipfed.config import SIGNALS
from clipfed.defense.registry import DEFENSES
from clipfed.defense.replies import partition_id
from clipfed.defense.scoring import (
    Probe,
    combine,
    combine_low,
    flagged,
    pass_size,
    running_scores,
    score_clients,
    views,
)
from clipfed.defense.strategy import DefenseStrategy
from clipfed.defense.updates import clip_to_norm
from clipfed.devices import autocast, place
from clipfed.models import create_model
from clipfed.models.state import conform, to_array_record
from clipfed.records import array_record
from clipfed.streams import Stream, stream_rng
from clipfed.training import to_tensor
from clipfed.trigger_like import probe_rows

if TYPE_CHECKING:
    from clipfed.config import RunConfig
    from clipfed.data_synth import ServerDataset
    from clipfed.defense.sampler import PartitionSampler
    from clipfed.runs.report import AggregationReport



def build_probe(data: ServerDataset, size: int, num_classes: int, seed: int,
                device: torch.device | None = None) -> Probe:
    """A class-balanced set of clean server images and every trigger-like copy of them.

    Args:
        data: The server dataset.
        size: About how many clean images (``size // num_classes`` per class, at least one, fewer
            where a class has fewer); every trigger-like copy of them joins (``augment.copies``
            each: 2 by default, so the default probe of 500 holds 500 + 1000 images).
        num_classes: C.
        seed: The run seed (the ``CLIPFED_PROBE`` stream chooses the images).
        device: Where the probe's tensors are made (None: the CPU).

    Returns:
        The probe, every tensor on ``device``.
    """
    rng = stream_rng(seed, Stream.CLIPFED_PROBE)
    clean_rows = np.flatnonzero(data.clean)
    chosen = clean_rows[probe_rows(data.labels[clean_rows], size, num_classes, rng)]
    source = data.arrays["source_index"]  # a copy's clean image, as a position among clean rows
    probe_position = {int(row): i for i, row in enumerate(chosen)}
    keep = [r for r in np.flatnonzero(~data.clean) if int(clean_rows[source[r]]) in probe_position]
    sources = [probe_position[int(clean_rows[source[r]])] for r in keep]
    return Probe(
        clean_x=to_tensor(data.images[chosen], device),
        clean_y=torch.from_numpy(data.labels[chosen]).to(device),
        teacher_logits=torch.from_numpy(data.arrays["teacher_logits"][chosen]).to(device),
        augmented_x=to_tensor(data.images[keep] if keep else data.images[chosen][:0], device),
        augmented_y=torch.from_numpy(data.labels[keep]).to(device),
        augmented_source=torch.as_tensor(sources, dtype=torch.long, device=device),
        num_classes=num_classes,
    )


def kd_targets(teacher_logits: torch.Tensor, anchor_logits: torch.Tensor, labels: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Distillation targets under ``clipfed-kd-target = "better-of"``: per image, the softened
    teacher's distribution or the round's aggregate's own, whichever gives its label the higher
    probability (at temperature 1; a tie, or a non-finite aggregate, goes to the teacher).

    Distilling towards a teacher weaker than the aggregate costs what the federation learned
    beyond it (issue 20); this keeps the teacher's pull where it knows better, which is where a
    backdoor shows (a trigger-like copy the aggregate sends to the target class), and elsewhere
    holds the model to what it already knew, so every image keeps a target. Our choice, not the paper's.

    Args:
        teacher_logits: The teacher's logits (B, C).
        anchor_logits: The aggregate's logits before alignment (B, C), not differentiated.
        labels: The server labels (B,).
        temperature: The distillation temperature T.

    Returns:
        (targets (B, C), each row a distribution; taught (B,), True where the teacher's was chosen).
    """
    def knows(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1)

    # the teacher unless the aggregate knows strictly better: a tie, or an aggregate whose
    # probability is NaN (a diverged model), goes to the teacher
    taught = ~(knows(anchor_logits) > knows(teacher_logits))
    chosen = torch.where(taught[:, None], teacher_logits.float(), anchor_logits.float())
    return F.softmax(chosen / temperature, 1), taught


@DEFENSES.register("clipfed")
class ClipFedDefense(DefenseStrategy):
    """CLIP-Fed (see the module docstring).

    Attributes:
        model: The scoring template and the model ``post_align`` fine-tunes, on ``device``.
        probe: The scoring probe (``build_probe``), on ``device``.
        pass_size: Models and probe images per scoring pass (``scoring.pass_size(device)``).
        train_x, train_y, teacher_logits, prototypes: The fine-tuning set (R images, normalised
            (R, 3, 32, 32); labels (R,); teacher logits (R, C)) and the teacher's class
            prototypes (C, E), on ``device``.
        projector: ``Linear(feature_dim, E)``, trained across rounds, on ``device``.
    """

    needs_server_data = True
    min_filter_updates = 3  # a robust z (median and MAD over the round's clients) needs 3 to mean anything

    @classmethod
    def filter_minimum(cls, cfg: RunConfig) -> int:
        return cls.min_filter_updates if cfg.clipfed_pre else 0

    def __init__(self, cfg: RunConfig, server_data: ServerDataset,
                 sampler: PartitionSampler | None = None,
                 on_report: Callable[[AggregationReport], None] | None = None) -> None:
        super().__init__(cfg, sampler=sampler, on_report=on_report)
        self.signals = cfg.clipfed_signals.split(",")
        self.model = create_model(cfg.model, cfg.num_classes)
        place(self.model, self.device, cfg.amp)
        self.probe = build_probe(server_data, cfg.clipfed_probe_size, cfg.num_classes, cfg.seed, self.device)
        self.pass_size = pass_size(self.device)
        rows = np.arange(len(server_data.labels)) if cfg.clipfed_augmented else np.flatnonzero(server_data.clean)
        self.train_x = to_tensor(server_data.images[rows], self.device)  # (R, 3, 32, 32)
        self.train_y = torch.from_numpy(server_data.labels[rows]).to(self.device)  # (R,)
        self.teacher_logits = torch.from_numpy(server_data.arrays["teacher_logits"][rows]).to(self.device)  # (R, C)
        self.prototypes = torch.from_numpy(server_data.arrays["prototypes"]).to(self.device)  # (C, E)
        torch.manual_seed(cfg.seed)
        self.projector = torch.nn.Linear(self.model.feature_dim, self.prototypes.shape[1]).to(self.device)
        self.low_signals = [n for n in cfg.clipfed_low_signals.split(",") if n]
        self.history: dict[int, float] = {}  # partition id -> running score after its last round
        self.low_history: dict[int, float] = {}  # the same for the low side (clipfed-low-signals)

    def state_dict(self) -> dict[str, Any]:
        """The projector and the clients' running scores carry across rounds; everything else is
        rebuilt from the config. Tensors are CPU copies, so a checkpoint loads on any machine."""
        return {"projector": {k: v.detach().cpu().clone() for k, v in self.projector.state_dict().items()},
                "history": dict(self.history), "low_history": dict(self.low_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.projector.load_state_dict(state["projector"])
        # none in checkpoints written before they existed
        self.history = {int(k): float(v) for k, v in state.get("history", {}).items()}
        self.low_history = {int(k): float(v) for k, v in state.get("low_history", {}).items()}

    def running_scores(self, partitions: list[int], combined: torch.Tensor) -> torch.Tensor:
        """``scoring.running_scores`` with this run's ``clipfed-history-weight`` and memory."""
        return running_scores(self.history, partitions, combined, self.cfg.clipfed_history_weight)

    # -- pre-aggregation -------------------------------------------------------------------
    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        if len(replies) < self.filter_minimum(self.cfg) or not self.cfg.clipfed_pre or self.global_arrays is None:
            return replies
        started = time.perf_counter()
        updates, _, _ = self.updates(replies)
        records = [array_record(m.content) for m in replies] + [self.global_arrays]  # the global one last
        outputs = views(self.model, (r.to_torch_state_dict() for r in records), self.probe, self.pass_size,
                        self.cfg.amp)
        # Every signal is scored and recorded (they share the passes above, so the unused ones cost
        # almost nothing) and only the configured ones are combined: each run's result.json then
        # holds what choosing other signals would have seen (the bench's separability table).
        scores = score_clients(list(SIGNALS), outputs[:-1], outputs[-1:], self.probe, updates)
        combined = combine({name: scores[name] for name in self.signals})
        pids = [partition_id(m) for m in replies]
        running = self.running_scores(pids, combined)
        low = None
        if self.low_signals:  # lowness: the negated signals' robust z, with the same history
            low = running_scores(self.low_history, pids, combine_low({n: scores[n] for n in self.low_signals}),
                                 self.cfg.clipfed_history_weight)
        excluded = flagged(running, self.cfg.clipfed_z_threshold, low, self.cfg.clipfed_low_threshold)
        self.details["signals"] = list(self.signals)
        self.details["scores"] = {
            "partition": pids,
            "combined": [round(float(v), 4) for v in combined],
            **({"running": [round(float(v), 4) for v in running]} if running is not combined else {}),
            **({"low": [round(float(v), 4) for v in low]} if low is not None else {}),
            **{name: [round(float(v), 4) for v in values] for name, values in scores.items()},
        }
        self.details["pre_seconds"] = round(time.perf_counter() - started, 4)
        return [m for i, m in enumerate(replies) if i not in excluded]

    # -- aggregation + post-aggregation -----------------------------------------------------
    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        started = time.perf_counter()
        if not self.cfg.clipfed_clip_norm:
            aggregate = super().combine(server_round, replies)
            assert aggregate is not None
        else:
            updates, base, keys = self.updates(replies)
            bound = updates.norm(dim=1).quantile(0.5)  # the true median (torch.median: lower middle)
            mean_update = (clip_to_norm(updates, bound) * self.example_weights(replies).unsqueeze(1)).sum(0)
            self.details["clip_bound"] = round(float(bound), 4)
            aggregate = self.apply_update(mean_update, base, keys, replies)
        self.details["aggregate_seconds"] = round(time.perf_counter() - started, 4)
        if self.cfg.clipfed_post and self.cfg.clipfed_post_steps > 0:
            aggregate = self.post_align(server_round, aggregate)
        return aggregate

    def post_align(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """A few SGD steps aligning the model with the teacher on the server dataset, on the device.

        Args:
            server_round: Seeds the batch draw (``CLIPFED_POST`` stream, a CPU generator).
            arrays: The model to align (CPU ArrayRecord, e.g. this round's aggregate).

        Returns:
            The aligned model as a CPU ArrayRecord; ``details`` gets ``post_loss`` (each term's
            mean over the steps), ``post_seconds`` and, with ``clipfed-kd-target = "better-of"``,
            ``kd_teacher_share`` (the share of images the teacher taught, first step and mean).
        """
        started = time.perf_counter()
        cfg = self.cfg
        model = self.model
        model.load_state_dict(arrays.to_torch_state_dict())
        model.train()
        params = list(model.parameters()) + list(self.projector.parameters())
        optimizer = torch.optim.SGD(params, lr=cfg.clipfed_post_lr, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(int(stream_rng(
            cfg.seed, Stream.CLIPFED_POST, server_round).integers(2**62)))
        temperature = cfg.clipfed_kd_temperature
        history: dict[str, list[torch.Tensor]] = {"kl": [], "pc": [], "ce": []}  # per step, on the device
        teacher_share: list[torch.Tensor] = []  # clipfed-kd-target better-of: each step's share taught
        anchor = None  # better-of: the aggregate as it came, frozen, in eval mode
        if cfg.clipfed_kd_target == "better-of" and cfg.clipfed_lambda_kl:
            anchor = copy.deepcopy(model).eval().requires_grad_(False)
        for _ in range(cfg.clipfed_post_steps):
            idx = torch.randint(len(self.train_y), (cfg.clipfed_post_batch,), generator=generator).to(self.device)
            x = self.train_x[idx]
            with autocast(self.device, cfg.amp):
                features = model.features(x)
                logits = model.head(features)
                losses: dict[str, torch.Tensor] = {}
                if cfg.clipfed_lambda_kl:
                    if anchor is None:
                        targets = F.softmax(self.teacher_logits[idx] / temperature, 1)
                    else:
                        with torch.no_grad():
                            targets, taught = kd_targets(self.teacher_logits[idx], anchor(x), self.train_y[idx],
                                                         temperature)
                        teacher_share.append(taught.float().mean())
                    losses["kl"] = cfg.clipfed_lambda_kl * temperature**2 * F.kl_div(
                        F.log_softmax(logits / temperature, 1), targets, reduction="batchmean")
                if cfg.clipfed_lambda_pc:
                    projected = F.normalize(self.projector(features), dim=1)
                    losses["pc"] = cfg.clipfed_lambda_pc * F.cross_entropy(
                        projected @ self.prototypes.T / cfg.clipfed_pc_temperature, self.train_y[idx])
                if cfg.clipfed_lambda_ce:
                    losses["ce"] = cfg.clipfed_lambda_ce * F.cross_entropy(logits, self.train_y[idx])
            if not losses:
                break
            loss = sum(losses.values())
            assert isinstance(loss, torch.Tensor)  # a sum of at least one tensor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in losses.items():
                history[name].append(value.detach())
        totals = {name: 0.0 for name in history}
        for name, values in history.items():  # one device sync per term, summed as floats in step order
            for value in torch.stack(values).tolist() if values else []:
                totals[name] += value / cfg.clipfed_post_steps
        self.details["post_loss"] = {k: round(v, 4) for k, v in totals.items()}
        if teacher_share:
            shares = torch.stack(teacher_share).tolist()
            self.details["kd_teacher_share"] = {"first": round(shares[0], 4),
                                                "mean": round(sum(shares) / len(shares), 4)}
        self.details["post_seconds"] = round(time.perf_counter() - started, 4)
        return to_array_record(model.state_dict())


@DEFENSES.register("teacher-only")
class TeacherOnlyDefense(ClipFedDefense):
    """The control row of every efficacy table: what the teacher alone gives the global model."""

    min_filter_updates = 0  # no client trains, so there is nothing to filter
    trains_clients = False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from clipfed.runs.report import AggregationReport

        started = time.perf_counter()
        report = AggregationReport(server_round)
        self.details = report.details
        assert self.global_arrays is not None
        arrays = conform(self.post_align(server_round, self.global_arrays), self.global_arrays)
        report.server_seconds = time.perf_counter() - started
        if self.on_report is not None:
            self.on_report(report)
        return arrays, MetricRecord({"num-kept": 0})
