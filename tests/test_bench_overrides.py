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


def test_field_names_count_as_their_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`teacher_pool` is `teacher-pool`: it reaches the same runs, and a grid key is refused by either name."""
    assert main(["bench", "--suite", "standard", "--defenses", "fedavg", "--attacks", "badnets", "--seeds", "0",
                 "-c", "seed=3", "--out-dir", str(tmp_path)]) == 2
    assert main(["bench", "--suite", "standard", "--defenses", "fedavg", "--attacks", "badnets", "--seeds", "0",
                 "-c", "dirichlet_alpha=0.1", "--out-dir", str(tmp_path)]) == 2
    assert "dirichlet-alpha: set by the suite's grid per cell" in capsys.readouterr().err


def test_the_durable_budgets_and_its_strong_teacher_rows_are_named(tmp_path: Path) -> None:
    durable = SUITES["durable"]
    suite = replace(durable, overrides={"attack-epochs": 3})
    problems = override_problems(suite, plan(suite, ["fedavg"], ["badnets"], budget="equal", variants=[]), tmp_path)
    assert problems and problems[0].startswith("attack-epochs: set by the suite's grid") and "--budget" in problems[0]
    own = {"teacher": "openclip", "teacher-model": "ViT-B-32", "teacher-pretrained": "laion2b_s34b_b79k"}
    suite = replace(durable, overrides=own)
    problems = override_problems(suite, plan(suite, ["clipfed"], ["badnets"]), tmp_path)
    assert problems and all(p.startswith("in the row '") and "strong-teacher" in p and "--variants" in p
                            for p in problems)
    assert override_problems(suite, plan(suite, ["clipfed"], ["badnets"], variants=[]), tmp_path) == []


def test_report_only_takes_the_runs_made_with_the_same_teacher(tmp_path: Path) -> None:
    """Two teachers' runs of one cell in one folder: each report finds its own."""
    import json

    from clipfed.bench.runner import existing_runs

    cells = plan(STANDARD, ["clipfed"], ["badnets"], [0], ["cifar10-dir0.5"], variants=[])
    clipfed = next(c for c in cells if c.row == "clipfed")
    for name, pool in (("aaaaaaaa", "public"), ("bbbbbbbb", "train-split")):
        folder = tmp_path / "runs" / f"{clipfed.name}-{name}"
        folder.mkdir(parents=True)
        config = clipfed.config(STANDARD, tmp_path).to_flower() | {"teacher-pool": pool}
        (folder / "result.json").write_text(json.dumps({"run_name": folder.name, "config": config, "rounds": [],
                                                          "status": "completed"}))
    for overrides, expected in (({}, "aaaaaaaa"), ({"teacher-pool": "train-split"}, "bbbbbbbb")):
        suite = replace(STANDARD, overrides=overrides)
        found, _ = existing_runs(suite, [clipfed], tmp_path)
        assert [run_dir.name[-8:] for _, run_dir in found] == [expected]
