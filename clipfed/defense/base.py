"""``DefenseStrategy``: FedAvg plus what every defense here shares.

- Reproducible sampling: nodes are chosen by *partition id* with a seeded RNG, so the same seed
  samples the same clients whatever random node ids the SuperLink hands out.
- Deterministic aggregation: replies are ordered by partition id before any arithmetic.
- A report per round of participants, excluded clients and server seconds, from which
  detection (tp/fp/fn/tn) is scored against the roles clients report.

A concrete defense overrides ``select`` (who is kept) and/or ``combine`` (how kept updates are
merged); FedAvg overrides neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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

from clipfed.defense.updates import flatten, unflatten
from clipfed.defense.validation import parse_partition_id, reply_problem
from clipfed.flower_internals import construct_messages, with_content
from clipfed.models.state import buffer_names, conform
from clipfed.records import array_record, metric
from clipfed.streams import Stream, stream_rng

if TYPE_CHECKING:
    from clipfed.config import RunConfig



@dataclass
class AggregationReport:
    """What one round's aggregation did, in partition ids (never node ids)."""

    server_round: int
    participants: list[int] = field(default_factory=list)
    malicious: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    rejected: list[dict[str, object]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # sampled; no reply in time, or an error reply
    offline: list[int] = field(default_factory=list)  # not sampled: their node had disconnected
    refused: list[dict[str, object]] = field(default_factory=list)  # nodes whose partition claim was refused
    server_seconds: float = 0.0
    details: dict[str, object] = field(default_factory=dict)  # defense-specific: scores, timings

    def detection(self) -> dict[str, int]:
        """Confusion counts of 'excluded' against 'reported malicious this round'."""
        excluded, malicious = set(self.excluded), set(self.malicious)
        benign = set(self.participants) - malicious
        return {
            "tp": len(excluded & malicious),
            "fp": len(excluded & benign),
            "fn": len(malicious - excluded),
            "tn": len(benign - excluded),
        }


def detached(replies: list[Message], keys: Sequence[str] | None = None) -> list[Message]:
    """Shallow copies whose ArrayRecords are new mappings (of ``keys`` only, when given): flwr's
    FedMedian/FedTrimmedAvg pop arrays out of the replies they aggregate, and ours must stay
    intact for the report; ``keys`` lets flwr's rules see the parameters and not the statistics."""
    return [with_content(msg, RecordDict({
        name: ArrayRecord({k: v for k, v in value.items() if keys is None or k in keys})
        if isinstance(value, ArrayRecord) else value
        for name, value in msg.content.items()})) for msg in replies]


def partition_id(msg: Message) -> int:
    return int(metric(msg.content, "partition-id"))


class PartitionSampler:
    """Maps node ids to partition ids once (a QUERY round), then samples partitions by seed."""

    def __init__(self, cfg: RunConfig, poll_seconds: float = 1.0) -> None:
        self.seed = cfg.seed
        self.num_clients = cfg.num_clients
        self.sample_size = cfg.clients_per_round
        self.timeout = cfg.round_timeout
        self.poll_seconds = poll_seconds
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.offline: list[int] = []  # partitions whose node left the SuperLink
        self.refused: dict[int, dict[str, object]] = {}  # node id -> why its partition claim was refused

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(nodes)} of num-clients={self.num_clients} SuperNodes connected after "
                    f"{self.timeout:.0f} s: run with --federation-config 'num-supernodes="
                    f"{self.num_clients}' (simulation) or start {self.num_clients} SuperNodes"
                )
            log(INFO, "Waiting for SuperNodes: %d of %d connected", len(nodes), self.num_clients)
            time.sleep(self.poll_seconds)
        return nodes

    def discover(self, grid: Grid) -> list[int]:
        """Ask every node we have not met for its partition id; return the nodes online now.

        Only the first round waits for all ``num-clients`` nodes; later rounds go on with the
        nodes that are still connected (a dead SuperNode drops out of the SuperLink's list), and
        a node that joins later (a restarted SuperNode) is asked for its partition id. A node
        whose answer cannot be used (no partition id, one outside ``0..num-clients-1``, or one that
        a node still online already holds) is refused: logged, listed in ``refused`` (and so in
        every round's report), never sampled; the run goes on without it.
        """
        nodes = sorted(grid.get_node_ids()) if self.node_of else self._wait_for_nodes(grid)
        known = set(self.node_of.values()) | set(self.refused)
        unknown = [n for n in nodes if n not in known]
        if not unknown:
            return nodes
        queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown]
        online = set(nodes)
        for reply in sorted(grid.send_and_receive(queries, timeout=self.timeout),
                            key=lambda m: m.metadata.src_node_id):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "Node %d did not report its partition: %s", node, reply.error.reason)
                continue
            pid, reason = self._claimed_partition(reply, online)
            if reason is not None:
                self.refused[node] = {"node": node, "partition": pid, "reason": reason}
                log(WARNING, "Refused node %d: %s", node, reason)
                continue
            assert pid is not None
            if pid in self.node_of:
                log(WARNING, "Partition %d moved from node %d (offline) to node %d (a restarted SuperNode)",
                    pid, self.node_of[pid], node)
            self.node_of[pid] = node
        return nodes

    def _claimed_partition(self, reply: Message, online: set[int]) -> tuple[int | None, str | None]:
        """The partition id a QUERY reply claims, or why the claim is refused."""
        try:
            value = reply.content["metrics"]["partition-id"]
        except KeyError:
            return None, "its reply carries no partition-id metric"
        pid, problem = parse_partition_id(value, self.num_clients)
        if problem is not None or pid is None:
            return pid, problem
        holder = self.node_of.get(pid)
        if holder is not None and holder in online:
            return pid, f"partition-id={pid} is already held by node {holder}, which is online"
        return pid, None

    def sample(self, grid: Grid, server_round: int) -> dict[int, int]:
        """This round's clients as {node id: partition id}, ordered by partition id."""
        online = set(self.discover(grid))
        if not self.node_of:  # a run in which no client can train must fail, not "complete" empty
            raise RuntimeError(
                f"round {server_round}: none of the {len(online)} connected SuperNodes reported its "
                f"partition id within round-timeout={self.timeout:g} s ({len(self.refused)} refused); "
                "a ClientApp's first start can take longer than that: raise round-timeout")
        partitions = sorted(p for p, node in self.node_of.items() if node in online)
        self.offline = sorted(p for p, node in self.node_of.items() if node not in online)
        if self.offline:
            log(WARNING, "Round %d: partitions %s are offline", server_round, self.offline)
        rng = stream_rng(self.seed, Stream.SAMPLING, server_round)
        size = min(self.sample_size, len(partitions))
        chosen = sorted(int(p) for p in rng.choice(partitions, size=size, replace=False))
        log(INFO, "configure_train: sampled partitions %s", chosen)
        return {self.node_of[p]: p for p in chosen}


class DefenseStrategy(FedAvg):
    """FedAvg with seeded partition sampling, ordered aggregation and a per-round report."""

    needs_server_data: ClassVar[bool] = False  # true: the ServerApp passes server_data=, teacher=

    def __init__(
        self,
        cfg: RunConfig,
        sampler: PartitionSampler | None = None,
        on_report: Callable[[AggregationReport], None] | None = None,
    ) -> None:
        super().__init__(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=0.0,  # evaluation is centralised (MA/ASR on the server's test set)
            min_available_nodes=cfg.num_clients,
            min_train_nodes=1,
        )
        self.cfg = cfg
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
        """
        if self.global_arrays is None:
            raise RuntimeError("no global model recorded: configure_train was not called this round")
        buffers = buffer_names(self.cfg.model, self.cfg.num_classes)
        return [k for k in self.global_arrays if k not in buffers]

    # Checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State carried from round to round (a checkpoint holds it); stateless defenses: {}."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, when a run resumes."""

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
        self.global_arrays = arrays
        self.sampled = self.sampler.sample(grid, server_round)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return construct_messages(self, record, list(self.sampled), MessageType.TRAIN)

    def select(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies to aggregate; a filtering defense overrides this. FedAvg keeps all."""
        return replies

    def combine(self, server_round: int, replies: list[Message]) -> ArrayRecord | None:
        """Merge the kept replies (None: keep the previous model); FedAvg's weighted mean here."""
        return aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)

    # Helpers for defenses that work on flat update vectors -----------------------------------
    def updates(self, replies: list[Message]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(n, d) parameter updates relative to the global model, the flat global parameters
        (d,), and the parameter keys they were flattened from (buffers are not updates)."""
        keys = self.parameter_keys
        assert self.global_arrays is not None
        base = flatten(self.global_arrays, keys)
        return torch.stack([flatten(array_record(m.content), keys) - base for m in replies]), base, keys

    def with_statistics(self, parameters: ArrayRecord, replies: list[Message]) -> ArrayRecord:
        """``parameters`` plus every buffer as the example-weighted mean over ``replies`` (the kept
        clients): a mean of valid running statistics is a valid statistic (variances stay > 0)."""
        averaged = aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)
        return ArrayRecord({k: parameters[k] if k in parameters else averaged[k] for k in averaged})

    def apply_update(self, update: torch.Tensor, base: torch.Tensor, keys: list[str],
                     replies: list[Message]) -> ArrayRecord:
        """``base + update`` on the parameter ``keys``; buffers get the mean over ``replies``."""
        averaged = aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)
        return unflatten(base + update, averaged, keys)

    def example_weights(self, replies: list[Message]) -> torch.Tensor:
        weights = torch.tensor([float(metric(m.content, "num-examples")) for m in replies])
        return weights / weights.sum()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
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
