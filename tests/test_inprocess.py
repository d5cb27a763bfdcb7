"""The in-process engine runs the real ServerApp main with the real ClientApp."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipfed.config import RunConfig
from clipfed.engines.inprocess import run_inprocess
from clipfed.runs.results import load_result


def config(data_dir: Path, out: Path, **overrides: object) -> RunConfig:
    return RunConfig.from_flower({"num-clients": 3, "num-malicious": 1, "num-server-rounds": 1,
                                  "partition": "iid", "batch-size": 16, "data-dir": str(data_dir),
                                  "out-dir": str(out), "run-name": "r", **overrides})


def test_a_run_completes_and_records_every_round(fake_data_dir: Path, tmp_path: Path) -> None:
    result = load_result(run_inprocess(config(fake_data_dir, tmp_path, **{"pgd-eps": 0.3})))
    assert result["status"] == "completed" and [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["rounds"][1]["participants"] == [0, 1, 2]
    assert result["unused_keys"] == ["pgd-eps=0.3: read by attack-training:pgd; this run has attack='badnets' "
                                     "(parts badnets+sgd+none)"], "a key no part of the run reads is recorded"


def test_a_failure_before_training_leaves_a_failed_result(fake_data_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "synth.toml"
    recipe.write_text("seed = 5\n")  # a different split than the run's: refused
    cfg = config(fake_data_dir, tmp_path, defense="clipfed", **{"synth-config": str(recipe)})
    with pytest.raises(ValueError, match="overlap client data"):
        run_inprocess(cfg)
    assert load_result(tmp_path / "r")["status"] == "failed"
