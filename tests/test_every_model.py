"""Every registered model trains through the ClientApp and every registered defense.

The state dict's round trip is the kind of fault under test: 0-d arrays (BatchNorm's
``num_batches_tracked``) and integer buffers must keep shape and dtype through the reply,
validation, each defense's aggregation and the next round's ClientApp, and running statistics
must stay valid statistics. Rounds run through ``strategy.start`` on the in-process grid: the
real sampler, ``configure_train``, ClientApp dispatch and ``aggregate_train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flower_mocks import server_identity  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord

from clipfed.config import RunConfig
from clipfed.defense import DEFENSES, create_defense, list_defenses
from clipfed.defense.sampler import PartitionSampler
from clipfed.engines.inprocess import InProcessGrid
from clipfed.models import create_model, list_models
from clipfed.runs.report import AggregationReport

pytestmark = pytest.mark.usefixtures("server_identity")
CLIENTS = 5


def tiny_run(data_dir: Path, model: str, defense: str) -> RunConfig:
    """5 clients (one BadNets attacker), one SGD step of 4 images each; krum-f=0 so that Bulyan's
    n >= 4f+3 holds with 5 clients; server-side steps cut to a few so ResNet-18 stays cheap."""
    return RunConfig.from_flower({
        "model": model, "defense": defense, "num-clients": CLIENTS, "num-malicious": 1,
        "data-dir": str(data_dir), "public-pool-fraction": 0.5, "partition": "iid",
        "local-steps": 1, "batch-size": 4, "lr": 0.05, "krum-f": 0, "rlr-threshold": 1,
        "clipfed-post-steps": 2, "clipfed-post-batch": 8, "clipfed-probe-size": 20,
        "fltrust-root-size": 8, "round-timeout": 5.0,
    })


@pytest.mark.parametrize("defense", list_defenses())
@pytest.mark.parametrize("model", list_models())
def test_every_model_trains_through_the_clientapp_and_every_defense(
        model: str, defense: str, fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_run(fake_data_dir, model, defense)
    reports: list[AggregationReport] = []
    extra = {"server_data": server_data} if DEFENSES.get(defense).needs_server_data else {}
    strategy = create_defense(cfg, sampler=PartitionSampler(cfg, poll_seconds=0.0), on_report=reports.append,
                              **extra)
    torch.manual_seed(0)
    initial = ArrayRecord(create_model(model, cfg.num_classes).state_dict())
    result = strategy.start(grid=InProcessGrid(cfg), initial_arrays=initial, num_rounds=2,
                            timeout=cfg.round_timeout, train_config=ConfigRecord())

    assert [r.server_round for r in reports] == [1, 2]
    for report in reports:
        assert report.rejected == [] and report.missing == [], report.rejected or report.missing
        if defense != "teacher-only":  # the control row trains no client
            assert report.participants == list(range(CLIENTS))
    final = result.arrays
    assert set(final) == set(initial)
    for key, array in final.items():
        assert tuple(array.shape) == tuple(initial[key].shape), key
        assert array.dtype == initial[key].dtype, key
        values = array.numpy()
        assert np.isfinite(values).all(), key
        if key.endswith("running_var"):
            assert (values > 0).all(), f"{key} is no longer a variance"
    trained = [k for k in final if not np.array_equal(final[k].numpy(), initial[k].numpy())]
    assert trained, "two rounds changed no parameter"
    counters = [k for k in final if k.endswith("num_batches_tracked")]
    assert all(int(final[k].numpy()) > 0 for k in counters), "BatchNorm step counters were not aggregated"


def test_the_contract_runs_every_model_and_defense_the_readme_names() -> None:
    """The parametrisation above comes from the registries; this pins that it still reaches the
    components the README promises (a model or defense dropped from a catalogue fails here)."""
    assert {"cnn", "resnet20", "resnet18"} <= set(list_models())
    assert {"fedavg", "krum", "multikrum", "median", "trimmedmean", "bulyan", "flame", "fltrust", "foolsgold",
            "rlr", "normclip", "weakdp", "crfl", "clipfed", "teacher-only"} <= set(list_defenses())
