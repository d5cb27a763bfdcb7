"""`clipfed bench -c`: the user's keys (their own teacher, say) reach every run that reads them;
the runs that do not read them keep their config, so a finished control or warm start is reused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clipfed.bench.runner import override_problems, plan
from clipfed.bench.suites import SUITES
from clipfed.cli import main

STANDARD = SUITES["standard"]


def _configs(overrides: dict, out: Path) -> dict[str, dict]:
    suite = replace(STANDARD, overrides=overrides)
    cells = plan(suite, ["fedavg", "clipfed"], ["badnets"], [0], ["cifar10-dir0.5"])
    assert override_problems(suite, cells, out) == []
    return {cell.name: cell.config(suite, out).to_flower() for cell in cells}


def test_a_teacher_key_reaches_the_runs_with_a_teacher_and_leaves_the_others_as_they_were(tmp_path: Path) -> None:
    plain = _configs({}, tmp_path)
    strong = _configs({"teacher-pool": "train-split"}, tmp_path)
    assert plain.keys() == strong.keys()
    changed = {name for name in plain if plain[name] != strong[name]}
    assert changed == {"cifar10-dir0.5--teacher-only--badnets--s0", "cifar10-dir0.5--clipfed--badnets--s0"}
    assert all(strong[name]["teacher-pool"] == "train-split" for name in changed)
    assert all(strong[name]["run-name"] != plain[name]["run-name"] for name in changed)  # a new config hash


def test_a_key_every_run_reads_reaches_the_warm_start_too(tmp_path: Path) -> None:
    configs = _configs({"lr": 0.05}, tmp_path)
    assert {c["lr"] for c in configs.values()} == {0.05}
    assert any(name.endswith("--pretrain--none--s0") for name in configs)


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"seed": 3}, "seed: set by the suite's grid per cell"),
    ({"dirichlet-alpha": 0.1}, "dirichlet-alpha: set by the suite's grid per cell"),
    ({"local-steps": 10}, "local-steps: set by the suite's grid per cell"),  # the warm start sets its own
    ({"pgd-eps": 0.3}, "pgd-eps=0.3: no run of this plan reads it"),
])
def test_a_key_the_grid_sets_or_no_run_reads_is_refused_before_anything_runs(
        overrides: dict, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = replace(STANDARD, overrides=overrides)
    cells = plan(suite, ["fedavg", "clipfed"], ["badnets"], [0], ["cifar10-dir0.5"])
    assert [p for p in override_problems(suite, cells, tmp_path) if p.startswith(problem)]
    text = " ".join(f"{k}={v!r}" for k, v in overrides.items())
    assert main(["bench", "--suite", "standard", "--defenses", "fedavg", "--attacks", "badnets", "--seeds", "0",
                 "-c", text, "--out-dir", str(tmp_path / "out")]) == 2
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
