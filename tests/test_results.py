import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipfed.config import RunConfig
from clipfed.evaluation import Evaluation
from clipfed.runs.report import AggregationReport
from clipfed.runs.results import RunExistsError, RunRecorder, diverged_at, load_result, results_table


def config(tmp_path: Path, **overrides: object) -> RunConfig:
    return RunConfig.from_flower({"out-dir": str(tmp_path), "run-name": "r1", **overrides})


def test_a_running_result_whose_process_is_gone_reads_as_stopped(tmp_path: Path) -> None:
    """SIGKILL leaves ``running`` in result.json; a reader on the same machine says ``stopped``,
    with why, and the tables show it so. A live process, another host's run or a result that
    records no process keep ``running``."""
    recorder = RunRecorder.create(config(tmp_path))
    recorder.on_evaluation(0, Evaluation(0.1, 0.0, [0.1] * 10), 0.5)
    assert load_result(recorder.run_dir)["status"] == "running", "this very process is alive"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    path = recorder.run_dir / "result.json"
    payload = json.loads(path.read_text())
    for process, expected in ((payload["process"] | {"pid": int(gone.stdout)}, "stopped"),
                              ({"host": "another-machine", "pid": int(gone.stdout)}, "running"),
                              (None, "running")):
        path.write_text(json.dumps({**payload, "process": process}))
        result = load_result(recorder.run_dir)
        assert result["status"] == expected, process
    path.write_text(json.dumps({**payload, "process": payload["process"] | {"pid": int(gone.stdout)}}))
    result = load_result(recorder.run_dir)
    assert f"(pid {gone.stdout.strip()} on " in result["stopped_why"] and "after round 0" in result["stopped_why"]
    assert "| stopped |" in results_table([result])
    assert json.loads(path.read_text())["status"] == "running", "reading never rewrites the file"


def test_result_json_schema_and_atomic_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorder = RunRecorder.create(config(tmp_path))
    assert load_result(recorder.run_dir)["status"] == "running"
    recorder.on_evaluation(0, Evaluation(0.1, 0.0, [0.1] * 10), 0.5)
    recorder.on_report(AggregationReport(1, participants=[0, 1, 2], malicious=[2], excluded=[2],
                                         server_seconds=0.25))
    recorder.on_evaluation(1, Evaluation(0.5, 0.2, [0.5] * 10, racc=0.7), 0.5)
    assert "| MA 0.500 | ASR 0.200 | R-Acc 0.700 |" in capsys.readouterr().out.splitlines()[-1]
    partial = load_result(recorder.run_dir)
    assert partial["status"] == "running" and len(partial["rounds"]) == 2
    recorder.finish()

    result = json.loads((tmp_path / "r1" / "result.json").read_text())
    assert set(result) >= {"config", "versions", "seed", "rounds", "final", "status"}
    assert result["config"]["run-name"] == "r1" and result["status"] == "completed"
    assert set(result["versions"]) >= {"python", "torch", "flwr", "clipfed", "git_commit"}
    last = result["rounds"][-1]
    assert last["excluded"] == [2] and last["detection"] == {"tp": 1, "fp": 0, "fn": 0, "tn": 2}
    assert last["server_seconds"] == 0.25 and last["round_seconds"] >= 0
    assert last["racc"] == 0.7
    assert result["final"] == {"ma": 0.5, "asr": 0.2, "racc": 0.7, "per_class_acc": [0.5] * 10}


def test_an_existing_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    RunRecorder.create(config(tmp_path)).finish()
    before = (tmp_path / "r1" / "result.json").read_text()
    with pytest.raises(RunExistsError, match="never overwritten"):
        RunRecorder.create(config(tmp_path))
    assert (tmp_path / "r1" / "result.json").read_text() == before


def test_empty_run_name_gives_unique_folders(tmp_path: Path) -> None:
    cfg = config(tmp_path, **{"run-name": ""})
    first = RunRecorder.create(cfg)
    assert first.run_dir.name.startswith("fedavg-badnets-cifar10-s0-")


def test_table_reports_detection_over_attacked_rounds(tmp_path: Path) -> None:
    recorder = RunRecorder.create(config(tmp_path, **{"attack-start-round": 2}))
    for rnd, excluded in ((1, [1]), (2, [1]), (3, [0])):
        recorder.on_report(AggregationReport(rnd, participants=[0, 1], malicious=[1], excluded=excluded))
        recorder.on_evaluation(rnd, Evaluation(0.5, 0.9, [0.5] * 10, racc=0.05), 0.1)
    recorder.finish()
    row = results_table([load_result(recorder.run_dir)]).splitlines()[-1]
    assert "| 0.500 | 0.900 | 0.050 | 0.50 | 0.50 |" in row  # rounds 2-3: tp 1, fp 1, fn 1


def test_a_diverged_round_is_recorded_and_shown_as_diverged(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    recorder = RunRecorder.create(config(tmp_path))
    recorder.on_evaluation(1, Evaluation(0.5, 0.2, [0.5] * 10), 0.1)
    nan = Evaluation(None, None, [None] * 10, diverged=True, unavailable={"ma": "diverged: non-finite parameters"})
    recorder.on_evaluation(2, nan, 0.1)
    recorder.on_evaluation(3, nan, 0.1)
    recorder.finish()
    assert "MA diverged | ASR diverged" in capsys.readouterr().out.splitlines()[-1]

    result = load_result(recorder.run_dir)
    assert [r["diverged"] for r in result["rounds"]] == [False, True, True]
    assert result["rounds"][-1]["ma"] is None and result["rounds"][-1]["asr"] is None
    assert result["rounds"][-1]["unavailable"] == {"ma": "diverged: non-finite parameters"}
    assert diverged_at(result) == 2
    row = results_table([result]).splitlines()[-1]
    assert "| diverged (round 2) | diverged (round 2) |" in row
    assert "0.100" not in row and "1.000" not in row


def test_a_run_that_recovers_is_not_diverged(tmp_path: Path) -> None:
    recorder = RunRecorder.create(config(tmp_path))
    recorder.on_evaluation(1, Evaluation(None, None, [None] * 10, diverged=True), 0.1)
    recorder.on_evaluation(2, Evaluation(0.5, 0.2, [0.5] * 10), 0.1)
    recorder.finish()
    assert diverged_at(load_result(recorder.run_dir)) is None
    assert "| 0.500 | 0.200 |" in results_table([load_result(recorder.run_dir)])


def _bench_result(seed: int, ma: float | None, asr: float | None, diverged: bool) -> dict:
    entry = {"round": 1, "ma": ma, "asr": asr, "diverged": diverged, "detection": {"tp": 0, "fp": 0, "fn": 0},
             "server_seconds": 0.1, "round_seconds": 1.0, "defense": {}}
    return {"seed": seed, "final": {"ma": ma, "asr": asr, "per_class_acc": [ma] * 10},
            "config": {"attack-start-round": 1}, "rounds": [entry]}


def test_bench_tables_mark_diverged_seeds_instead_of_averaging_them(tmp_path: Path) -> None:
    from clipfed.bench.report import Row, diverged_notes, markdown_table, paper_table, write_csv

    rows = [Row("s", "badnets", "fedavg", [_bench_result(0, 0.8, 0.3, False), _bench_result(1, None, None, True)]),
            Row("s", "badnets", "krum", [_bench_result(0, None, None, True)])]
    table = markdown_table(rows)
    assert "| 0.800 (1/2 seeds diverged) | 0.300 (1/2 seeds diverged) |" in table
    assert "| s | badnets | krum | none | 0 | completed | diverged | diverged |" in table
    assert "| krum | diverged |" in paper_table(rows)
    assert "fedavg (s, badnets): diverged (NaN/Inf model) in seed 1 from round 1" in diverged_notes(rows)
    write_csv(rows, tmp_path / "table.csv")
    lines = (tmp_path / "table.csv").read_text().splitlines()
    assert lines[0].startswith("setting,attack,row,seeds,diverged,ma_mean")
    assert lines[2].startswith("s,badnets,krum,1,1,,,,")  # no mean, no std: nothing to average


def _run(seed: int, ma: float, asr: float, status: str = "completed", skipped: str = "", **config: object) -> dict:
    cfg = RunConfig.from_flower({"seed": seed, "run-name": f"r-s{seed}", **config}).to_flower()
    entry = {"round": 1, "ma": ma, "asr": asr, "racc": 1 - asr, "server_seconds": 0.5,
             "detection": {"tp": 1, "fp": 0, "fn": 0, "tn": 3}, "defense": {"skipped": skipped} if skipped else {}}
    return {"run_name": f"r-s{seed}", "seed": seed, "status": status, "config": cfg, "rounds": [entry],
            "final": {"ma": ma, "asr": asr, "racc": 1 - asr},
            "server_data": {"teacher": "reference:cnn:pool-x", "reference_teacher": True}}


def test_clipfed_table_aggregates_seeds_and_shows_teacher_status_and_seeds() -> None:
    runs = [_run(0, 0.5, 0.2), _run(1, 0.7, 0.4), _run(2, 0.6, 0.3, **{"defense": "median"})]
    lines = results_table(runs).splitlines()
    assert "| teacher | seeds | status |" in lines[0] and len(lines) == 4, "seeds 0 and 1 are one row"
    assert lines[2].startswith("| r-s0 (+1 seeds) | fedavg | badnets | 4 | reference teacher (offline stand-in, "
                               "not a CLIP) | 0,1 | completed | 1 | 0.600 ± 0.100 | 0.300 ± 0.100 | 0.700 ± 0.100 |")
    assert "| r-s2 | median | badnets | 4 | reference teacher (offline stand-in, not a CLIP) | 2 | completed | 1 | " \
           "0.600 | 0.300 | 0.700 |" in lines[3]


def test_clipfed_table_keeps_cold_and_warm_runs_apart_but_merges_the_seeds_of_a_warm_start() -> None:
    """Each seed's warm start has its own path (and, trained to a plateau, a length of its own);
    whether a run was warm-started makes it another experiment (a cold run's MA averaged with warm
    ones would be a wrong row)."""
    def warm(seed: int, ma: float, after: int) -> dict:
        run = _run(seed, ma, 0.1, **{"init-model": f"runs/pretrain-s{seed}"})
        return run | {"init_model": {"path": f"runs/pretrain-s{seed}", "after_round": after}}

    lines = results_table([warm(0, 0.6, 140), warm(1, 0.8, 160), _run(2, 0.3, 0.1)]).splitlines()
    assert len(lines) == 4, lines
    assert lines[2].startswith("| r-s0 (+1 seeds) |") and "| 0,1 |" in lines[2] and "| 0.700 ± 0.100 |" in lines[2]
    assert lines[3].startswith("| r-s2 |") and "| 0.300 |" in lines[3]


def test_clipfed_table_merges_seeds_recorded_before_and_after_a_key_was_added() -> None:
    """A seed recorded before a key existed is one experiment with a seed recorded since with the key
    at its default; a seed with the key off its default is another."""
    old = _run(0, 0.5, 0.2, defense="clipfed")
    old["config"] = {k: v for k, v in old["config"].items() if k != "clipfed-kd-target"}
    lines = results_table([old, _run(1, 0.7, 0.4, defense="clipfed"),
                           _run(2, 0.6, 0.1, **{"defense": "clipfed", "clipfed-kd-target": "better-of"})]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| r-s0 (+1 seeds) |") and lines[3].startswith("| r-s2 |"), lines


def test_clipfed_table_rounds_shows_each_round_with_the_servers_share(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path) -> None:
    from clipfed.cli import main

    run = _run(0, 0.5, 0.2)
    run["rounds"] = [{"round": 0, "ma": 0.1, "asr": None, "racc": None, "server_seconds": 0.0, "round_seconds": 2.0},
                     {**run["rounds"][0], "round_seconds": 2.0, "excluded": [3]},
                     {"round": 2, "ma": None, "asr": None, "racc": None, "diverged": True, "server_seconds": 0.5,
                      "round_seconds": 4.0, "detection": {"tp": 0, "fp": 1, "fn": 0}}]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "result.json").write_text(json.dumps(run))
    assert main(["table", "--rounds", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("**r-s0** (completed; teacher: reference teacher")
    assert "| 0 | 0.100 | n/a | n/a | [] | 0 / 0 / 0 | 0.00 | 2.0 | n/a |" in lines
    assert "| 1 | 0.500 | 0.200 | 0.800 | [3] | 1 / 0 / 0 | 0.50 | 2.0 | 25% |" in lines
    assert "| 2 | diverged | diverged | diverged | [] | 0 / 1 / 0 | 0.50 | 4.0 | 12% |" in lines


def test_clipfed_table_marks_failed_runs_and_defenses_that_never_aggregated() -> None:
    mixed = [_run(0, 0.5, 0.2), _run(1, 0.7, 0.4, status="failed")]
    row = results_table(mixed).splitlines()[-1]
    assert "| 1 completed, 1 failed | 1, 1 (failed) | 0.500 | 0.200 | 0.800 |" in row, "the failed seed is not averaged"
    never = results_table([_run(0, 0.5, 0.2, skipped="needs 7 updates", **{"defense": "bulyan"})]).splitlines()[-1]
    assert "| completed, NEVER AGGREGATED |" in never
    no_teacher = {k: v for k, v in _run(0, 0.5, 0.2).items() if k != "server_data"}
    assert "| 4 | none | 0 |" in results_table([no_teacher])


def test_the_commit_is_the_one_of_the_code_that_runs(tmp_path: Path) -> None:
    """Code imported from another checkout (PYTHONPATH) records that checkout's HEAD, not the
    editable install's (a bench run from a fixed work tree while the main one moves on)."""
    import shutil
    import subprocess
    import sys

    tree = tmp_path / "tree"
    shutil.copytree(Path(__file__).resolve().parent.parent / "clipfed", tree / "clipfed",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run([sys.executable, "-c", "import clipfed.runs.results as r; print(r.__file__); "
                          "print(r.versions()['git_commit'])"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    imported, commit = out.stdout.split()
    assert imported.startswith(str(tree)) and commit == head
