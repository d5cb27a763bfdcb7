"""Issue 16, items 2, 6 and 7: BatchNorm statistics are not update coordinates, no value leaks
from one round into the next, and a rogue or misconfigured node is refused while the run goes on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flower_mocks import reply_from, server_identity, train_reply  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clipfed.app.client_app import train
from clipfed.config import RunConfig
from clipfed.defense import create_defense
from clipfed.defense.sampler import PartitionSampler
from clipfed.models import create_model
from clipfed.models.state import buffer_names, conform, to_array_record
from clipfed.runs.report import AggregationReport

pytestmark = pytest.mark.usefixtures("server_identity")
VAR = "stem.1.running_var"


def resnet20_state() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in create_model("resnet20", 10).state_dict().items()}


def cfg(**overrides: object) -> RunConfig:
    return RunConfig.from_flower({"model": "resnet20", "num-clients": 10, "num-malicious": 2,
                                  "rlr-threshold": 4, "max-update-norm": 1e6, **overrides})


def aggregate(defense: str, states: list[dict[str, np.ndarray]], base: dict[str, np.ndarray],
              **overrides: object) -> tuple[ArrayRecord, AggregationReport]:
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg(defense=defense, **overrides), on_report=reports.append)
    strategy.global_arrays = to_array_record(base)
    replies = [train_reply(100 + i, i, s, 10) for i, s in enumerate(states)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays, reports[0]


@pytest.mark.parametrize("defense", ["rlr", "normclip", "weakdp", "crfl", "flame", "foolsgold", "fedavg",
                                     "median", "trimmedmean", "multikrum"])
def test_running_statistics_are_averaged_never_flipped_clipped_or_noised(defense: str) -> None:
    """RLR with running_var updates [3, 3, -0.1, -0.1] around 1.0 gave -0.45; every defense now
    averages the statistics of the clients it keeps, so the variance stays a variance."""
    base = resnet20_state()
    rng = np.random.default_rng(0)
    states = []
    for shift in (3.0, 3.0, -0.1, -0.1):
        state = {k: v.copy() for k, v in base.items()}
        for key in state:  # small, agreeing parameter updates so every defense keeps every client
            if key not in buffer_names("resnet20", 10):
                state[key] = (state[key] + 0.01 + 1e-4 * rng.standard_normal(state[key].shape)).astype(np.float32)
        state[VAR] = np.full_like(base[VAR], 1.0 + shift)
        states.append(state)
    arrays, report = aggregate(defense, states, base, **{"trim-beta": 0.0, "krum-f": 0, "flame-noise": 0.0})
    kept = [states[p][VAR] for p in report.participants if p not in report.excluded]
    np.testing.assert_allclose(arrays[VAR].numpy(), np.mean(kept, axis=0), rtol=1e-5)
    assert (arrays[VAR].numpy() > 0).all()
    assert arrays["stem.1.num_batches_tracked"].dtype == "int64"
    assert arrays["stem.1.num_batches_tracked"].shape == ()


def test_a_negative_running_variance_is_rejected_with_its_reason() -> None:
    base = resnet20_state()
    bad = {k: v.copy() for k, v in base.items()}
    bad[VAR] = np.full_like(base[VAR], -0.5)
    _, report = aggregate("fedavg", [base, bad, base], base)
    assert [r["partition"] for r in report.rejected] == [None]
    assert "negative variance" in str(report.rejected[0]["reason"])
    assert report.participants == [0, 2]


def test_conform_restores_integer_dtype_and_zero_d_shape() -> None:
    reference = to_array_record({"n": np.array(3, dtype=np.int64), "w": np.ones(2, dtype=np.float32)})
    aggregated = to_array_record({"n": np.array(3.6), "w": np.ones(2, dtype=np.float64)})
    out = conform(aggregated, reference)
    assert out["n"].shape == () and out["n"].dtype == "int64" and int(out["n"].numpy()) == 4
    assert out["w"].dtype == "float32"


def test_scaling_boosts_parameters_but_leaves_running_statistics_as_trained(fake_data_dir: Path) -> None:
    """scaling turned a running_var of 0.5 (global 1.0) into -1.5 with boost 5."""
    run = RunConfig.from_flower({"model": "resnet20", "attack": "scaling", "boost-factor": 5.0,
                                 "num-clients": 2, "num-malicious": 2, "data-dir": str(fake_data_dir),
                                 "partition": "iid", "local-steps": 3, "batch-size": 8, "lr": 0.1}).to_flower()
    torch.manual_seed(0)
    initial = ArrayRecord(create_model("resnet20", 10).state_dict())
    message = Message(RecordDict({"arrays": initial, "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=100, message_type="train")
    context = Context(run_id=1, node_id=100, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config=run)
    reply = train(message, context)
    arrays = reply.content["arrays"]
    assert reply.content["metrics"]["is-malicious"] == 1
    for key in arrays:
        if key.endswith("running_var"):
            assert (arrays[key].numpy() > 0).all(), key
    assert arrays["stem.1.num_batches_tracked"].shape == () and int(arrays["stem.1.num_batches_tracked"].numpy()) == 3


def test_flame_clips_with_this_rounds_bound_when_too_few_replies_to_cluster() -> None:
    """FLAME with fewer than 3 replies used the previous round's bound (12.13 instead of ~0.4)."""
    strategy = create_defense(cfg(defense="flame", model="cnn", **{"flame-noise": 0.0}))
    dim = 4
    base = {"w": np.zeros(dim, dtype=np.float32)}
    strategy.global_arrays = to_array_record(base)
    big = [train_reply(100 + i, i, {"w": np.full(dim, 6.0 + i, dtype=np.float32)}, 10) for i in range(5)]
    strategy.aggregate_train(1, big)
    assert strategy.details["clip_bound"] > 10
    small = [train_reply(100 + i, i, {"w": np.full(dim, v, dtype=np.float32)}, 10) for i, v in enumerate((0.1, 0.3))]
    arrays, _ = strategy.aggregate_train(2, small)
    assert arrays is not None
    expected_bound = float(np.median([0.1 * 2, 0.3 * 2]))  # norms of the two updates: 0.2 and 0.6
    assert strategy.details["clip_bound"] == pytest.approx(expected_bound, rel=1e-4)


class ClaimGrid:
    """A grid whose nodes answer the partition QUERY with whatever partition id they claim."""

    def __init__(self, claims: dict[int, object]) -> None:
        self.claims = claims
        self.online = list(claims)

    def get_node_ids(self) -> list[int]:
        return list(self.online)

    def send_and_receive(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            claim = self.claims[node]
            metrics = MetricRecord({} if claim is None else {"partition-id": claim})  # type: ignore[dict-item]
            replies.append(reply_from(node, RecordDict({"metrics": metrics}), kind=message.metadata.message_type))
        return replies


def test_a_node_claiming_a_partition_outside_the_federation_is_refused_and_the_run_goes_on() -> None:
    sampler = PartitionSampler(cfg(**{"num-clients": 3}), poll_seconds=0.0)
    grid = ClaimGrid({11: 0, 12: 1, 13: 2, 14: 7, 15: None})
    chosen = sampler.sample(grid, 1)  # type: ignore[arg-type]
    assert sorted(chosen.values()) == [0, 1, 2]
    assert set(sampler.refused) == {14, 15}
    assert "partition-id=7 is outside 0..2" in str(sampler.refused[14]["reason"])
    assert "no partition-id" in str(sampler.refused[15]["reason"])


def test_a_second_node_claiming_a_held_partition_is_refused_not_swapped() -> None:
    sampler = PartitionSampler(cfg(**{"num-clients": 2}), poll_seconds=0.0)
    grid = ClaimGrid({11: 0, 12: 1})
    sampler.sample(grid, 1)  # type: ignore[arg-type]
    grid.claims[13] = 1  # a rogue node joins and claims partition 1 while node 12 is online
    grid.online.append(13)
    chosen = sampler.sample(grid, 2)  # type: ignore[arg-type]
    assert chosen == {11: 0, 12: 1}
    assert "already held by node 12" in str(sampler.refused[13]["reason"])
    grid.online.remove(12)  # node 12 leaves; a restarted SuperNode may now take over partition 1
    grid.claims[14] = 1
    grid.online.append(14)
    assert sampler.sample(grid, 3) == {11: 0, 14: 1}  # type: ignore[arg-type]


def test_refused_nodes_are_recorded_in_every_round_report_and_lying_replies_rejected() -> None:
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg(defense="fedavg", model="cnn", **{"num-clients": 2}), on_report=reports.append)
    strategy.sampler = PartitionSampler(cfg(**{"num-clients": 2}), poll_seconds=0.0)
    grid = ClaimGrid({11: 0, 12: 1, 14: 9})
    base = to_array_record({"w": np.zeros(3, dtype=np.float32)})
    list(strategy.configure_train(1, base, ConfigRecord(), grid))  # type: ignore[arg-type]
    replies = [train_reply(11, 0, {"w": np.ones(3, dtype=np.float32)}, 10),
               train_reply(12, 0, {"w": np.ones(3, dtype=np.float32)}, 10)]  # node 12 holds partition 1
    strategy.aggregate_train(1, replies)
    report = reports[0]
    assert [r["node"] for r in report.refused] == [14]
    assert report.participants == [0]
    assert "holds partition 1" in str(report.rejected[0]["reason"])


def test_a_resnet_checkpoint_round_trip_keeps_every_shape_and_dtype(tmp_path: Path) -> None:
    from clipfed.runs.checkpoint import Checkpoint, snapshot

    arrays = to_array_record(resnet20_state())
    snapshot(3, arrays, {}, cfg()).save(tmp_path)
    restored = Checkpoint.load(tmp_path).array_record()
    assert {k: (tuple(v.shape), v.dtype) for k, v in restored.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in arrays.items()}
    model = create_model("resnet20", 10)
    model.load_state_dict(restored.to_torch_state_dict())  # strict: the next round's ClientApp can load it


def test_a_run_in_which_no_node_reports_its_partition_fails_instead_of_completing_empty() -> None:
    """With a too-short round-timeout every partition query timed out and the run 'completed'
    with no participant in any round."""
    sampler = PartitionSampler(cfg(**{"num-clients": 2, "round-timeout": 5.0}), poll_seconds=0.0)
    grid = ClaimGrid({11: 0, 12: 1})
    grid.send_and_receive = lambda messages, timeout=None: []  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="none of the 2 connected SuperNodes reported its partition id"):
        sampler.sample(grid, 1)  # type: ignore[arg-type]


def test_the_table_marks_a_run_that_did_not_complete() -> None:
    from clipfed.runs.results import results_table

    result = {"run_name": "r", "status": "interrupted", "config": cfg().to_flower(), "final": {},
              "rounds": [{"round": 1, "server_seconds": 1.0, "detection": {"tp": 0, "fp": 0, "fn": 0, "tn": 1},
                          "ma": 0.5, "asr": 0.1}]}
    assert "| 1 (interrupted) |" in results_table([result])
