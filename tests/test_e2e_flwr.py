"""End to end through the real ``flwr`` CLI: a private SuperLink, simulation, status check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipfed.cli import app_dir, main
from clipfed.defense import list_defenses
from clipfed.engines.launch import COMPLETED, flwr_run, local_superlink, run_status
from clipfed.models import list_models
from clipfed.runs.results import load_result

pytestmark = pytest.mark.e2e

COMPARED = ("round", "ma", "asr", "per_class_acc", "participants", "malicious", "excluded", "detection")


def tiny_config(data_dir: Path, out_dir: Path, name: str) -> dict[str, object]:
    return {"num-clients": 3, "num-malicious": 1, "num-server-rounds": 2, "partition": "iid",
            "batch-size": 16, "data-dir": str(data_dir), "out-dir": str(out_dir), "run-name": name,
            "fraction-train": 1.0, "local-epochs": 2, "lr": 0.02}


@pytest.mark.timeout(900)
def test_flwr_run_completes_and_the_same_config_gives_the_same_metrics(
    fake_data_dir: Path, tmp_path: Path
) -> None:
    outcomes, results = [], []
    for name in ("first", "second"):
        home = tmp_path / f"flwr-home-{name}"
        outcomes.append(flwr_run(app_dir(), tiny_config(fake_data_dir, tmp_path, name),
                                 num_supernodes=3, timeout=600, flwr_home=home))
        results.append(load_result(tmp_path / name))
    assert all(o.status == COMPLETED for o in outcomes)
    first, second = results
    assert first["status"] == "completed" and [r["round"] for r in first["rounds"]] == [0, 1, 2]
    assert first["rounds"][-1]["participants"] == [0, 1, 2]
    assert len(first["rounds"][-1]["malicious"]) == 1
    assert first["final"]["ma"] > 0.1
    strip = lambda res: [{k: r[k] for k in COMPARED} for r in res["rounds"]]  # noqa: E731
    assert strip(first) == strip(second)


@pytest.mark.timeout(120)
def test_superlink_is_stopped_by_pid(tmp_path: Path) -> None:
    with local_superlink(tmp_path / "home") as link:
        os.kill(link.pid, 0)  # alive
        assert run_status(tmp_path / "home")[1].startswith("unknown")
    with pytest.raises(ProcessLookupError):
        os.kill(link.pid, 0)


def test_cli_refuses_bad_config_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-c", "partition='shards' lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "partition" in err and "'iid' or 'dirichlet'" in err and "lr" in err and "greater than 0" in err


@pytest.mark.timeout(900)
def test_flwr_run_with_clipfed_completes(fake_data_dir: Path, tmp_path: Path) -> None:
    config = {**tiny_config(fake_data_dir, tmp_path, "clipfed"), "defense": "clipfed",
              "public-pool-fraction": 0.5, "clipfed-post-steps": 5, "clipfed-probe-size": 50}
    outcome = flwr_run(app_dir(), config, num_supernodes=3, timeout=600, flwr_home=tmp_path / "home")
    assert outcome.status == COMPLETED
    result = load_result(tmp_path / "clipfed")
    assert result["status"] == "completed" and result["server_data"]["reference_teacher"]
    last = result["rounds"][-1]
    assert {"scores", "post_seconds", "post_loss"} <= set(last["defense"])
    assert last["defense"]["scores"]["partition"] == [0, 1, 2]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("defense", [d for d in list_defenses() if d not in ("fedavg", "clipfed")])
def test_flwr_run_completes_for_every_defense(defense: str, fake_data_dir: Path, tmp_path: Path) -> None:
    config = {**tiny_config(fake_data_dir, tmp_path, defense), "defense": defense, "num-server-rounds": 1,
              "public-pool-fraction": 0.5, "clipfed-post-steps": 3, "fltrust-root-size": 50,
              "krum-f": 0}
    outcome = flwr_run(app_dir(), config, num_supernodes=3, timeout=500, flwr_home=tmp_path / "home")
    assert outcome.status == COMPLETED
    assert load_result(tmp_path / defense)["status"] == "completed"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", [m for m in list_models() if m != "cnn"])
def test_flwr_run_trains_every_model(model: str, fake_data_dir: Path, tmp_path: Path) -> None:
    """The ResNets through the real flwr CLI (the CNN runs in every test above): every reply
    accepted, the model changed, a finite MA."""
    config = {**tiny_config(fake_data_dir, tmp_path, model), "model": model, "local-epochs": 1,
              "local-steps": 3}
    outcome = flwr_run(app_dir(), config, num_supernodes=3, timeout=800, flwr_home=tmp_path / "home")
    assert outcome.status == COMPLETED
    result = load_result(tmp_path / model)
    assert result["status"] == "completed" and result["config"]["model"] == model
    for entry in result["rounds"][1:]:
        assert entry["participants"] == [0, 1, 2] and entry["rejected"] == [], entry
    assert result["final"]["ma"] is not None
