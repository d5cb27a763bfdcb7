"""Malformed replies are rejected with a reason and the round goes on, for every defense."""

from __future__ import annotations

import numpy as np
import pytest
from flower_mocks import arrays_of, error_from, reply_from, server_identity, train_reply  # noqa: F401
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from clipfed.config import RunConfig
from clipfed.defense import DEFENSES, create_defense, list_defenses
from clipfed.runs.report import AggregationReport

pytestmark = pytest.mark.usefixtures("server_identity")
BASE = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def valid(pid: int, rng: np.random.Generator) -> object:
    arrays = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in BASE.items()}
    return train_reply(100 + pid, pid, arrays, int(rng.integers(5, 50)))


def malformed(kind: str, pid: int, rng: np.random.Generator) -> object:
    arrays = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in BASE.items()}
    metrics = {"num-examples": 10, "train-loss": 1.0, "partition-id": pid, "is-malicious": 0}
    node = 500 + pid
    if kind == "error":
        return error_from(node, "ClientApp crashed")
    if kind == "nan":
        arrays["w"][0, 0] = np.nan
    elif kind == "inf":
        arrays["b"][1] = np.inf
    elif kind == "shape":
        arrays["w"] = np.zeros((3, 4), dtype=np.float32)
    elif kind == "dtype":
        arrays["b"] = arrays["b"].astype(np.float64)
    elif kind == "missing-key":
        del arrays["b"]
    elif kind == "extra-key":
        arrays["evil"] = np.zeros(2, dtype=np.float32)
    elif kind == "norm":
        arrays["w"] = arrays["w"] + 1e6
    elif kind == "no-metrics":
        return reply_from(node, RecordDict({"arrays": arrays_of(arrays)}))
    elif kind == "bad-examples":
        metrics["num-examples"] = int(rng.choice([0, -5]))
    elif kind == "list-metric":
        metrics["num-examples"] = [10, 10]  # type: ignore[assignment]  (a MetricRecord allows lists)
    elif kind == "nan-loss":
        metrics["train-loss"] = float("nan")
    elif kind == "partition":
        metrics["partition-id"] = 99
    elif kind == "missing-metric":
        del metrics["partition-id"]
    elif kind == "two-arrays":
        content = RecordDict({"arrays": arrays_of(arrays), "more": arrays_of(arrays),
                              "metrics": MetricRecord(metrics)})
        return reply_from(node, content)
    return reply_from(node, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                        "metrics": MetricRecord(metrics)}))


KINDS = ("error", "nan", "inf", "shape", "dtype", "missing-key", "extra-key", "norm", "no-metrics",
         "bad-examples", "list-metric", "nan-loss", "partition", "missing-metric", "two-arrays")
SERVERLESS = [d for d in list_defenses() if not DEFENSES.get(d).needs_server_data]


def strategy(defense: str, reports: list[AggregationReport]):  # type: ignore[no-untyped-def]
    cfg = RunConfig.from_flower({"defense": defense, "num-clients": 40, "num-malicious": 1, "krum-f": 1,
                                 "max-update-norm": 100.0})
    out = create_defense(cfg, on_report=reports.append)
    out.global_arrays = arrays_of(BASE)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_each_malformed_reply_is_rejected_with_its_reason(kind: str) -> None:
    rng = np.random.default_rng(0)
    reports: list[AggregationReport] = []
    good = [valid(p, rng) for p in range(4)]
    arrays, _ = strategy("fedavg", reports).aggregate_train(1, [*good, malformed(kind, 7, rng)])
    assert arrays is not None
    (rejected,) = reports[0].rejected
    assert rejected["reason"] and reports[0].participants == [0, 1, 2, 3]


def test_a_duplicate_partition_is_rejected() -> None:
    rng = np.random.default_rng(0)
    reports: list[AggregationReport] = []
    strategy("fedavg", reports).aggregate_train(1, [valid(0, rng), valid(1, rng), valid(1, rng)])
    assert [r["reason"] for r in reports[0].rejected] == ["a second reply for partition 1"]


@pytest.fixture
def frozen_gc():  # type: ignore[no-untyped-def]
    """flwr's Bulyan calls gc.collect() per reply (ArrayRecord.to_numpy_ndarrays); freezing the
    long-lived objects keeps those collections cheap in this big test process."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("defense", SERVERLESS)
def test_fuzz_every_defense_with_malformed_replies(defense: str, frozen_gc: None) -> None:
    rng = np.random.default_rng(list_defenses().index(defense))
    bad_total = 0
    for server_round in range(1, 21):  # 20 rounds x ~10 malformed = 200+ per defense
        n_bad = int(rng.integers(10, 14))
        good = [valid(p, rng) for p in range(12)]
        bad = [malformed(str(rng.choice(KINDS)), 20 + i, rng) for i in range(n_bad)]
        mixed = [*good, *bad]
        rng.shuffle(mixed)  # type: ignore[arg-type]
        reports: list[AggregationReport] = []
        clean_reports: list[AggregationReport] = []
        arrays, _ = strategy(defense, reports).aggregate_train(server_round, mixed)
        expected, _ = strategy(defense, clean_reports).aggregate_train(server_round, good)
        assert len(reports[0].rejected) == n_bad and all(r["reason"] for r in reports[0].rejected)
        assert reports[0].participants == list(range(12))
        if expected is None:
            assert arrays is None
        else:
            assert arrays is not None
            for key in BASE:
                np.testing.assert_allclose(arrays[key].numpy(), expected[key].numpy(), rtol=1e-6)
        bad_total += n_bad
    assert bad_total >= 200
