"""DefenseStrategy/FedAvg on mock Flower reply Messages and a fake Grid."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from flower_mocks import arrays_of, error_from, server_identity, train_reply  # noqa: F401
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from clipfed.config import RunConfig
from clipfed.defense import create_defense, list_defenses
from clipfed.defense.sampler import PartitionSampler
from clipfed.runs.report import AggregationReport

SHAPES = {"w": (3, 2), "b": (2,)}

pytestmark = pytest.mark.usefixtures("server_identity")


def reply(pid: int, value: float, examples: int, malicious: bool = False) -> Message:
    arrays = {k: np.full(s, value, dtype=np.float32) for k, s in SHAPES.items()}
    return train_reply(1000 + pid, pid, arrays, examples, malicious, loss=value)


class FakeGrid:
    """Answers QUERY messages as SuperNodes holding the given partitions would."""

    def __init__(self, partition_of_node: dict[int, int]) -> None:
        self.partition_of_node = partition_of_node
        self.queries = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.partition_of_node)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            self.queries += 1
            node = msg.metadata.dst_node_id
            content = RecordDict({"metrics": MetricRecord({"partition-id": self.partition_of_node[node]})})
            out.append(Message(content, reply_to=msg))
        return out


def cfg(**overrides: object) -> RunConfig:
    return RunConfig.from_flower({"num-clients": 4, "num-malicious": 1, **overrides})


def test_fedavg_is_the_example_weighted_mean_in_partition_order() -> None:
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg(), on_report=reports.append)
    replies = [reply(2, 3.0, 30, malicious=True), reply(0, 1.0, 10), error_from(77), reply(1, 2.0, 60)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = (1.0 * 10 + 2.0 * 60 + 3.0 * 30) / 100
    assert arrays is not None and metrics is not None
    for key, shape in SHAPES.items():
        np.testing.assert_allclose(arrays[key].numpy(), np.full(shape, expected), rtol=1e-6)
    assert metrics["train-loss"] == expected and metrics["num-excluded"] == 0

    report = reports[0]
    assert report.participants == [0, 1, 2]
    assert report.malicious == [2] and report.excluded == []
    assert report.detection() == {"tp": 0, "fp": 0, "fn": 1, "tn": 2}
    assert report.rejected == [{"node": 77, "partition": None, "reason": "client error: boom"}]


def test_no_valid_reply_keeps_the_previous_model() -> None:
    strategy = create_defense(cfg())
    assert strategy.aggregate_train(1, [error_from(5)]) == (None, None)
    assert strategy.last_report is not None and strategy.last_report.rejected


def test_detection_counts_from_exclusions() -> None:
    report = AggregationReport(1, participants=[0, 1, 2, 3], malicious=[1, 3], excluded=[1, 2])
    assert report.detection() == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}


def test_sampling_is_by_partition_and_independent_of_node_ids() -> None:
    config = cfg(**{"fraction-train": 0.5, "num-clients": 10, "num-malicious": 0})
    grid_a = FakeGrid({100 + p: p for p in range(10)})
    grid_b = FakeGrid({9999 - 7 * p: p for p in range(10)})
    sampler_a, sampler_b = PartitionSampler(config), PartitionSampler(config)
    for server_round in (1, 2, 3):
        nodes_a = sampler_a.sample(grid_a, server_round)
        nodes_b = sampler_b.sample(grid_b, server_round)
        parts_a = [grid_a.partition_of_node[n] for n in nodes_a]
        assert parts_a == list(nodes_a.values())
        assert parts_a == [grid_b.partition_of_node[n] for n in nodes_b]
        assert len(parts_a) == 5 and parts_a == sorted(parts_a)
    assert grid_a.queries == 10, "nodes are queried once, not every round"


def test_a_node_that_leaves_is_not_waited_for_and_a_silent_one_is_recorded_missing() -> None:
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg(**{"round-timeout": 1.0}), on_report=reports.append)
    grid = FakeGrid({1000 + p: p for p in range(4)})
    arrays = arrays_of({k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    # Partition 3 dies after round 1; partition 1 is still listed but never answers round 2.
    del grid.partition_of_node[1003]
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1000, 1001, 1002]
    arrays_out, _ = strategy.aggregate_train(2, [reply(0, 1.0, 10), reply(2, 3.0, 10)])
    assert arrays_out is not None
    np.testing.assert_allclose(arrays_out["b"].numpy(), [2.0, 2.0])
    assert reports[-1].missing == [1] and reports[-1].offline == [3]
    assert reports[-1].participants == [0, 2]


def test_configure_train_sends_the_round_and_arrays_to_sampled_nodes() -> None:
    strategy = create_defense(cfg())
    grid = FakeGrid({10 + p: p for p in range(4)})
    arrays = arrays_of({"w": np.zeros(2, dtype=np.float32)})
    messages = list(strategy.configure_train(3, arrays, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [10, 11, 12, 13]
    assert all(m.content["config"]["server-round"] == 3 for m in messages)
    assert all(m.metadata.message_type == MessageType.TRAIN for m in messages)


def test_defense_registry_lists_fedavg() -> None:
    assert "fedavg" in list_defenses()
