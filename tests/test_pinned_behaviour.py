"""Behaviour pinned: a few CNN rounds' MA/ASR/exclusions per defense and per attack.

Refactors (the structure issue, the GPU path) must not change what a run computes on the CPU.
The expected values in ``pinned_behaviour.json`` were written by ``test_write_pins``
at the commit that added it (clipfed 0.2.0) and are compared exactly: MA and ASR are ratios of
counts over the fake test set, so any change of computation that moves one prediction shows.

Defenses that need the server dataset are compared only when the fixture's data digest is the
pinned one (its reference teacher is trained here, 25 one-thread epochs, so another CPU's float
order gives other data); otherwise they are skipped, saying so. The other cases are compared on
every machine: they held on CI's CPUs and this one, once Krum stopped choosing by float32
rounding (its pins failed on CI while its distances were rounding: ``clipfed.defense.krum``).

Regenerate (only when a change of results is intended, and say so in the commit):
``CLIPFED_WRITE_PINS=1 pytest tests/test_pinned_behaviour.py -k write_pins``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from flower_mocks import server_identity  # noqa: F401  (fixture)
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from clipfed import __version__
from clipfed.attacks import create_attack, list_attacks
from clipfed.config import RunConfig
from clipfed.data import load_federated
from clipfed.data_synth.artifact import data_digest
from clipfed.defense import DEFENSES, create_defense, list_defenses
from clipfed.defense.sampler import PartitionSampler
from clipfed.engines.inprocess import InProcessGrid
from clipfed.evaluation import BackdoorEvaluator, trigger_pool
from clipfed.models import create_model
from clipfed.runs.report import AggregationReport

PINNED = Path(__file__).with_name("pinned_behaviour.json")
CASES = [(d, "badnets") for d in list_defenses()] + [("fedavg", a) for a in list_attacks() if a != "badnets"]


# Keys a case needs so that its mechanism acts in these short rounds (a pgd-eps the update exceeds).
ATTACK_KEYS: dict[str, dict[str, Any]] = {
    "pgd": {"pgd-eps": 0.02, "pgd-every": 3},
    "a3fl": {"a3fl-outer-epochs": 2, "a3fl-adv-epochs": 1},  # the official 200 x 5 take minutes a round
}


def case_config(data_dir: Path, defense: str, attack: str) -> RunConfig:
    return RunConfig.from_flower({**ATTACK_KEYS.get(attack, {}),
        "defense": defense, "attack": attack, "num-clients": 6, "num-malicious": 2, "data-dir": str(data_dir),
        "public-pool-fraction": 0.5, "partition": "iid", "local-steps": 10, "batch-size": 16, "lr": 0.01,
        "poison-rate": 0.3, "patch-size": 6, "flip-source": 3, "krum-f": 1, "rlr-threshold": 2,
        "clipfed-post-steps": 3, "clipfed-post-batch": 16, "clipfed-probe-size": 40, "fltrust-root-size": 32,
    })


def run_case(data_dir: Path, defense: str, attack: str, server_data: Any) -> list[dict[str, Any]]:
    """Three rounds through the in-process grid; per round MA, ASR and the excluded partitions."""
    cfg = case_config(data_dir, defense, attack)
    reports: list[AggregationReport] = []
    extra = {"server_data": server_data} if DEFENSES.get(defense).needs_server_data else {}
    strategy = create_defense(cfg, sampler=PartitionSampler(cfg, poll_seconds=0.0), on_report=reports.append,
                              **extra)
    train, test, split = load_federated(cfg)
    evaluator = BackdoorEvaluator(test, create_attack(cfg), trigger_pool=trigger_pool(train, split, cfg.seed),
                                  seed=cfg.seed)
    model = create_model(cfg.model, cfg.num_classes)
    rows: list[dict[str, Any]] = []
    sent: dict[str, ArrayRecord] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if evaluator.rederives and server_round > 0:  # a learned trigger, as the ServerApp measures it
            model.load_state_dict(sent["global"].to_torch_state_dict())
            evaluator.rederive_trigger(model, server_round)
        sent["global"] = arrays
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluator(model)
        rows.append({"round": server_round, "ma": result.ma, "asr": result.asr})
        return MetricRecord({})

    torch.manual_seed(cfg.seed)
    initial = ArrayRecord(create_model(cfg.model, cfg.num_classes).state_dict())
    strategy.start(grid=InProcessGrid(cfg), initial_arrays=initial, num_rounds=3, timeout=10.0,
                   train_config=ConfigRecord(), evaluate_fn=evaluate)
    for row in rows[1:]:
        row["excluded"] = reports[row["round"] - 1].excluded
    return rows


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    return json.loads(PINNED.read_text())


@pytest.mark.usefixtures("server_identity", "one_torch_thread")
@pytest.mark.parametrize(("defense", "attack"), CASES)
def test_a_few_cnn_rounds_compute_what_they_computed_when_pinned(
        defense: str, attack: str, fake_data_dir: Path, server_data: Any, pinned: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    key = f"{defense}/{attack}"
    assert key in pinned["cases"], f"{key} is not pinned: regenerate with --write (a new component)"
    if DEFENSES.get(defense).needs_server_data and \
            data_digest(server_data.images, server_data.labels) != pinned["server_data_digest"]:
        pytest.skip("this machine's reference teacher made other server data than the pinned one")
    assert run_case(fake_data_dir, defense, attack, server_data) == pinned["cases"][key]


@pytest.mark.usefixtures("server_identity", "one_torch_thread")
@pytest.mark.skipif(not os.environ.get("CLIPFED_WRITE_PINS"), reason="writes the pins: CLIPFED_WRITE_PINS=1")
def test_write_pins(fake_data_dir: Path, server_data: Any) -> None:  # type: ignore[no-untyped-def]
    cases = {f"{d}/{a}": run_case(fake_data_dir, d, a, server_data) for d, a in CASES}
    PINNED.write_text(json.dumps({
        "written_by": "CLIPFED_WRITE_PINS=1 pytest tests/test_pinned_behaviour.py -k write_pins",
        "clipfed": __version__,
        "server_data_digest": data_digest(server_data.images, server_data.labels),
        "cases": cases,
    }, indent=1) + "\n")
