"""``DefenseStrategy``: FedAvg plus what every defense here shares.

- Reproducible sampling by partition id (``sampler.PartitionSampler``).
- Deterministic aggregation: replies are ordered by partition id before any arithmetic.
- A report per round of participants, excluded clients and server seconds, from which
  detection (tp/fp/fn/tn) is scored against the roles clients report.

A concrete defense overrides ``select`` (who is kept) and/or ``combine`` (how kept updates are
merged); FedAvg (McMahan et al. 2017) overrides neither.

Writing a defense (``clipfed/defense/<name>.py``, registered with ``@DEFENSES.register(name)``):

- override ``select`` to exclude clients (the excluded ones are scored as detections) and/or
  ``combine`` to merge the kept ones; a rule on flat vectors reads them with ``updates`` and
  writes the result with ``apply_update`` (or ``with_statistics``), so that it acts on the
  trainable parameters only and buffers stay valid statistics;
- keep what ``select`` computes for ``combine`` in ``round_values`` (emptied every round), and
  per-round scores for the report in ``details``;
- override ``state_dict``/``load_state_dict`` when the defense carries state across rounds
  (FoolsGold's histories), so that a checkpoint resumes it;
- set ``needs_server_data = True`` and take a ``server_data`` constructor argument when the
  defense reads the synthesised server dataset (CLIP-Fed, FLTrust).

``aggregate_train`` (validation, ordering, the report) and ``configure_train`` (sampling) are
Flower's hooks; a defense leaves them alone (``teacher-only``, which trains no client, is the
exception).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from clipfed.defense.replies import partition_id
from clipfed.defense.sampler import PartitionSampler
from clipfed.defense.updates import flatten, unflatten
from clipfed.defense.validation import reply_problem
from clipfed.devices import resolve_device
from clipfed.flower_internals import construct_messages
from clipfed.models.state import buffer_names, conform
from clipfed.records import array_record, metric
from clipfed.runs.report import AggregationReport

if TYPE_CHECKING:
    from clipfed.config import RunConfig



class DefenseStrategy(FedAvg):
    """FedAvg with seeded partition sampling, ordered aggregation and a per-round report.

    Attributes:
        needs_server_data: Class-level; True makes the ServerApp (and the benchmarks) build the
            server dataset and pass it to the constructor as ``server_data=``.
        cfg: The run config.
        device: Where the defense's own computation runs (``device``, resolved on the server:
            FLTrust's root update, CLIP-Fed's scoring and post-aggregation step). Replies and the
            aggregate stay CPU ArrayRecords; a defense moves what it computes on here and back.
        sampler: Chooses each round's clients by partition id.
        on_report: Called with every round's ``AggregationReport`` (the run records use it).
        last_report: The latest round's report, or None before the first aggregation.
        details: The current round's ``AggregationReport.details`` (the same dict): defense-
            specific, JSON-serialisable values (scores, weights, the reason a round was skipped
            or left unfiltered).
        global_arrays: The global model this round's clients started from (set by
            ``configure_train``).
        sampled: This round's ``{node id: partition id}``.
        round_values: Values ``select`` computes for ``combine`` in the same round; emptied at the
            start of every ``aggregate_train``.
    """

    needs_server_data: ClassVar[bool] = False  # true: the ServerApp passes server_data=
    # Updates a round needs for the defense's filter (``select``) to judge them; with fewer it lets
    # every update through, says so in the log and records it (``details["unfiltered"]``), and
    # ``clipfed run`` warns before a run whose rounds are all that small (``checks.few_updates_note``).
    min_filter_updates: ClassVar[int] = 0
    # False: no client trains (teacher-only), so no attacker's training or update keys are read
    trains_clients: ClassVar[bool] = True

    def __init__(
        self,
        cfg: RunConfig,
        sampler: PartitionSampler | None = None,
        on_report: Callable[[AggregationReport], None] | None = None,
    ) -> None:
        """Configure flwr's FedAvg from ``cfg`` (``fraction-train``; client-side evaluation off).

        A subclass keeps this signature (adding ``server_data`` before ``sampler`` when it sets
        ``needs_server_data``) and passes ``sampler`` and ``on_report`` on, since
        ``create_defense`` passes them by keyword.

        Args:
            cfg: The validated run config.
            sampler: The client sampler; None builds ``PartitionSampler(cfg)``.
            on_report: Called with each round's ``AggregationReport`` at the end of
                ``aggregate_train``; None: the report is only kept in ``last_report``.
        """
        super().__init__(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=0.0,  # evaluation is centralised (MA/ASR on the server's test set)
            min_available_nodes=cfg.num_clients,
            min_train_nodes=1,
        )
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.details: dict[str, object] = {}  # the current round's report details, for subclasses
        self.sampler = sampler or PartitionSampler(cfg)
        self.on_report = on_report
        self.last_report: AggregationReport | None = None
        self.global_arrays: ArrayRecord | None = None  # what this round's clients started from
        self.sampled: dict[int, int] = {}  # this round's {node id: partition id}
        # Values one round computes in select() for its combine(); emptied at every round's start so
        # that nothing computed for round t is ever used in round t+1.
        self.round_values: dict[str, Any] = {}

    @property
    def parameter_keys(self) -> list[str]:
        """The global model's trainable-parameter keys, in its order: the update coordinates.

        Buffers (BatchNorm's running statistics and step counter) are not updates; they are
        averaged over the kept clients (``with_statistics``), never clipped, flipped or noised.

        Raises:
            RuntimeError: ``configure_train`` has not recorded a global model yet.
        """
        if self.global_arrays is None:
            raise RuntimeError("no global model recorded: configure_train was not called this round")
        buffers = buffer_names(self.cfg.model, self.cfg.num_classes)
        return [k for k in self.global_arrays if k not in buffers]

    # Checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State carried from round to round, which a checkpoint holds; override with
        ``load_state_dict`` when a defense has any.

        Returns:
            Values ``torch.save`` can store (tensors, numbers, lists, dicts); ``{}`` here.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, when a run resumes; a no-op here.

        Args:
            state: A previous ``state_dict()``, as the checkpoint loaded it.
        """

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop, able to begin at ``first_round`` (a resumed run).

        flwr's ``Strategy.start`` always begins at round 1 and evaluates round 0; a resumed run
        must continue at k+1 from a checkpoint. Evaluation is centralised (``evaluate_fn``), so
        the client-side evaluation phase of flwr's loop is left out.

        Args:
            grid: Flower's grid (the SuperLink, or ``InProcessGrid`` in one process).
            initial_arrays: The global model to start from (a state dict as an ArrayRecord).
            num_rounds: The last round to run.
            timeout: Seconds to wait for each round's replies.
            train_config: Sent to the clients every round (``server-round`` is added).
            evaluate_config: Unused (no client-side evaluation); kept for flwr's signature.
            evaluate_fn: ``(round, arrays) -> metrics`` after every round, and for round 0
                when ``first_round`` is 1.
            first_round: The first round to run (k + 1 when resuming after round k).

        Returns:
            flwr's ``Result``: the final arrays, per-round train metrics and server-side
            evaluation metrics.
        """
        log(INFO, "Starting %s strategy at round %d of %d", type(self).__name__, first_round, num_rounds)
        train_config = ConfigRecord() if train_config is None else train_config
        result = Result()
        arrays = result.arrays = initial_arrays
        if evaluate_fn is not None and first_round == 1 and (metrics := evaluate_fn(0, arrays)) is not None:
            result.evaluate_metrics_serverapp[0] = metrics
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
            replies = grid.send_and_receive(
                messages=self.configure_train(server_round, arrays, train_config, grid), timeout=timeout)
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            if evaluate_fn is not None and (metrics := evaluate_fn(server_round, arrays)) is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
        return result

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Record the global model, sample this round's clients and address a TRAIN message to each.

        Args:
            server_round: The round number (1-based); it seeds the sampling.
            arrays: The global model the clients start from.
            config: Sent with the arrays; ``server-round`` is set in it.
            grid: Where the nodes are.

        Returns:
            One TRAIN message per sampled node.
        """
        self.global_arrays = arrays
        self.sampled = self.sampler.sample(grid, server_round)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return construct_messages(self, record, list(self.sampled), MessageType.TRAIN)

    @classmethod
    def filter_minimum(cls, cfg: RunConfig) -> int:
        """Updates a round needs for ``select`` to judge them under ``cfg`` (0: no minimum)."""
        return cls.min_filter_updates

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies to aggregate: override to exclude clients. This one keeps all (FedAvg).

        Args:
            server_round: The round number.
            replies: This round's valid replies (they passed ``validation.reply_problem``), at
                least one, ordered by partition id, one per partition.

        Returns:
            The kept replies, a sub-list of ``replies`` (the same Message objects); every
            participant not in it is reported as excluded. An empty list keeps the previous model.
        """
        return replies

    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """Merge the kept replies: override to change the rule. This one is FedAvg's mean
        weighted by the ``num-examples`` metric, over parameters and buffers alike.

        Args:
            server_round: The round number.
            replies: What ``select`` kept, at least one, ordered by partition id.

        Returns:
            The new global model with the global model's keys (any dtype: ``aggregate_train``
            casts each entry back to the global model's shape and dtype), or None to keep the
            previous model this round (Bulyan with too few updates).
        """
        return aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)

    # Helpers for defenses that work on flat update vectors -----------------------------------
    def updates(self, replies: list[Message]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """The replies' parameter updates as flat vectors (buffers are not updates).

        Args:
            replies: n replies whose ``arrays`` hold the global model's keys.

        Returns:
            ``(updates, base, keys)``: float32 updates (n, d), row i being reply i's trainable
            parameters minus the global model's; the global model's flat float32 parameters (d,);
            and the parameter keys, in the global model's order, that both were flattened from
            (d = their total number of values).

        Raises:
            RuntimeError: No global model recorded this round (``configure_train`` not called).
        """
        keys = self.parameter_keys
        assert self.global_arrays is not None
        base = flatten(self.global_arrays, keys)
        return torch.stack([flatten(array_record(m.content), keys) - base for m in replies]), base, keys

    def with_statistics(self, parameters: ArrayRecord, replies: list[Message]) -> ArrayRecord:
        """``parameters`` plus every buffer as the example-weighted mean over ``replies``.

        A mean of valid running statistics is a valid statistic (variances stay > 0).

        Args:
            parameters: The merged trainable parameters (from a flwr rule, say); a key it holds
                is taken from it as it is.
            replies: The kept clients, weighted by their ``num-examples`` metric.

        Returns:
            An ArrayRecord with every key of the replies' arrays (integer buffers come back as
            float64; ``aggregate_train`` casts them back).
        """
        averaged = aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)
        return ArrayRecord({k: parameters[k] if k in parameters else averaged[k] for k in averaged})

    def apply_update(self, update: torch.Tensor, base: torch.Tensor, keys: list[str],
                     replies: list[Message]) -> ArrayRecord:
        """The global model after a flat update: ``base + update`` on the parameter ``keys``.

        Args:
            update: Float32 (d,), the merged update, in the layout of ``updates()``.
            base: Float32 (d,), the flat global parameters ``updates()`` returned.
            keys: The parameter keys ``updates()`` returned.
            replies: The kept clients; every buffer becomes their mean weighted by
                ``num-examples``.

        Returns:
            An ArrayRecord with every key of the replies' arrays; each parameter is reshaped and
            cast to its original shape and dtype.
        """
        averaged = aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)
        return unflatten(base + update, averaged, keys)

    def example_weights(self, replies: list[Message]) -> torch.Tensor:
        """FedAvg's weights: each reply's ``num-examples`` metric over their sum.

        Args:
            replies: n replies.

        Returns:
            Float32 (n,), non-negative, summing to 1.
        """
        weights = torch.tensor([float(metric(m.content, "num-examples")) for m in replies])
        return weights / weights.sum()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's aggregation hook; a defense customises ``select`` and ``combine`` instead.

        Validates every reply (rejected ones, with the reason, go into the report), orders the
        valid ones by partition id, calls ``select`` then ``combine``, casts the aggregate back
        to the global model's shapes and dtypes (``models.state.conform``), and reports the round
        (``last_report``, ``on_report``).

        Args:
            server_round: The round number.
            replies: The TRAIN replies, errors included.

        Returns:
            ``(arrays, metrics)``: the new global model and ``train-loss`` (example-weighted over
            the kept clients), ``num-kept``, ``num-excluded``; or ``(None, None)`` when nothing was
            aggregated (no valid reply, none kept, or ``combine`` returned None).
        """
        started = time.perf_counter()
        report = AggregationReport(server_round)
        self.round_values = {}
        replies = list(replies)
        answered = {msg.metadata.src_node_id for msg in replies if not msg.has_error()}
        report.missing = sorted(p for node, p in self.sampled.items() if node not in answered)
        report.offline = list(self.sampler.offline)
        report.refused = list(self.sampler.refused.values())
        if report.missing:
            log(WARNING, "Round %d: no reply from partitions %s (timeout or dead node)",
                server_round, report.missing)
        valid: list[Message] = []
        seen: set[int] = set()
        parameter_keys = set(self.parameter_keys) if self.global_arrays is not None else None
        for msg in replies:
            reason = reply_problem(msg, self.global_arrays, self.cfg.num_clients, self.cfg.max_update_norm,
                                   parameter_keys)
            sampled_as = self.sampled.get(msg.metadata.src_node_id)
            if reason is None and sampled_as is not None and partition_id(msg) != sampled_as:
                reason = f"reports partition-id={partition_id(msg)}, but its node holds partition {sampled_as}"
            if reason is None and partition_id(msg) in seen:
                reason = f"a second reply for partition {partition_id(msg)}"
            if reason is not None:
                node = msg.metadata.src_node_id
                report.rejected.append({"node": node, "partition": self.sampled.get(node), "reason": reason})
                log(WARNING, "Round %d: rejected reply from node %d: %s",
                    server_round, msg.metadata.src_node_id, reason)
                continue
            seen.add(partition_id(msg))
            valid.append(msg)
        valid.sort(key=partition_id)
        report.participants = [partition_id(m) for m in valid]
        report.malicious = [partition_id(m) for m in valid
                            if int(metric(m.content, "is-malicious", 0))]

        arrays, metrics = None, None
        self.details = report.details
        if valid and len(valid) < (minimum := self.filter_minimum(self.cfg)):
            report.details["unfiltered"] = (f"{type(self).__name__}'s filter needs >= {minimum} updates, got "
                                            f"{len(valid)}: every update aggregated unfiltered")
            log(WARNING, "Round %d: %s", server_round, report.details["unfiltered"])
        kept = self.select(server_round, valid) if valid else []
        kept_ids = {partition_id(m) for m in kept}
        report.excluded = [p for p in report.participants if p not in kept_ids]
        if kept:
            arrays = self.combine(server_round, kept)
        if arrays is not None and self.global_arrays is not None:
            arrays = conform(arrays, self.global_arrays)  # integer buffers back to int64, 0-d kept
        if arrays is not None:
            weights = np.array([float(metric(m.content, "num-examples")) for m in kept])
            losses = np.array([float(metric(m.content, "train-loss")) for m in kept])
            metrics = MetricRecord({
                "train-loss": float(np.average(losses, weights=weights)),
                "num-kept": len(kept),
                "num-excluded": len(report.excluded),
            })
        else:
            log(WARNING, "Round %d: nothing aggregated; the global model is unchanged", server_round)
        report.server_seconds = time.perf_counter() - started
        self.last_report = report
        if self.on_report is not None:
            self.on_report(report)
        return arrays, metrics
