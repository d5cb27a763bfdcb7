"""clipfed bench: the grid, resumability, the outputs; and the real `quick` suite end to end."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_ASSETS

from clipfed.attacks import list_attacks
from clipfed.bench.cli import cmd_bench_cost
from clipfed.bench.report import (
    Row,
    collect,
    markdown_table,
    paper_table,
    plot,
    run_commits_line,
    separability_table,
    skipped_notes,
    write_csv,
)
from clipfed.bench.runner import existing_runs, plan, run_suite
from clipfed.bench.suites import SUITES, Suite, control_of
from clipfed.cli import main
from clipfed.data.partition import long_tail_counts
from clipfed.defense import list_defenses
from clipfed.errors import UserError

TINY = Suite(
    name="tiny", description="test", seeds=(0,), pretrain_rounds=1, defenses=("fedavg", "median"),
    attacks=("badnets",), settings={"iid": {"partition": "iid"}},
    base={"num-clients": 3, "num-malicious": 1, "num-server-rounds": 1, "batch-size": 16,
          "public-pool-fraction": 0.5, "clipfed-post-steps": 2, "clipfed-probe-size": 50},
)


def test_every_suite_names_known_defenses_and_attacks() -> None:
    """Every planned config validates; an attack a suite lists that is not registered yet (the
    durable suite's, while they are being added) is refused at planning, by name."""
    for suite in SUITES.values():
        assert set(suite.defenses) <= set(list_defenses())
        registered = [a for a in suite.attacks if a in list_attacks() or a in suite.attack_variants]
        if missing := [a for a in suite.attacks if a not in registered]:
            with pytest.raises(UserError, match=f"attack\\(s\\) {', '.join(missing)} not registered"):
                plan(suite)
        for cell in plan(suite, attacks=registered):
            cell.config(suite, Path("/tmp/x"))  # every config validates


def test_plan_pretrains_first_and_carries_the_control_rows() -> None:
    cells = plan(TINY)
    assert cells[0].pretrain and cells[0].overrides["num-malicious"] == 0
    rows = [c.row for c in cells[1:]]
    assert rows == ["fedavg-no-attack", "teacher-only", "fedavg", "median"]


def test_plan_warm_starts_every_seed_of_a_setting_from_one_pretraining() -> None:
    suite = Suite(**{**TINY.__dict__, "seeds": (0, 1, 2), "pretrain_keys": {"local-steps": 7}})
    cells = plan(suite)
    pretrain = [c for c in cells if c.pretrain]
    assert len(pretrain) == 1 and pretrain[0].seed == 0
    assert pretrain[0].config(suite, Path("/tmp/x")).local_steps == 7
    assert {c.seed for c in cells if not c.pretrain} == {0, 1, 2}


def test_suite_runs_warm_started_writes_outputs_and_skips_finished_runs(
        fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPFED_DATA_DIR", str(fake_data_dir))
    cells = plan(TINY)
    runs = run_suite(TINY, tmp_path, cells, threads=1, workers=2)
    pretrain_dir = runs[0][1]
    for cell, run_dir in runs[1:]:
        result = json.loads((run_dir / "result.json").read_text())
        assert result["init_model"]["path"] == str(pretrain_dir), cell.name
    rows = collect(runs)
    assert [r.row for r in rows] == ["fedavg-no-attack", "teacher-only", "fedavg", "median"]
    table = markdown_table(rows)
    assert table.count("\n") == 4 + len(rows) and "| iid | badnets | fedavg |" in table
    assert table.startswith("Teacher: reference teacher (offline stand-in, not a CLIP); seeds: 0; runs: completed.")
    write_csv(rows, tmp_path / "table.csv")
    parsed = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [p["row"] for p in parsed] == [r.row for r in rows] and 0 <= float(parsed[2]["ma_mean"]) <= 1
    pngs = plot(rows, tmp_path)
    assert {p.name for p in pngs} == {"curves-iid-badnets.png", "per-class-iid-badnets.png", "scatter-iid.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    found, missing = existing_runs(TINY, cells, tmp_path)  # what --report-only reports, running nothing
    assert found == runs and missing == []
    wider = Suite(**{**TINY.__dict__, "defenses": ("fedavg", "median", "krum")})
    found, missing = existing_runs(wider, plan(wider), tmp_path)
    assert [c.name for c in missing] == ["iid--krum--badnets--s0"] and len(found) == len(runs)
    assert plan(TINY, variants=[]) == cells, "TINY has no variant rows"

    stamps = {d: (d / "result.json").stat().st_mtime_ns for _, d in runs}
    again = run_suite(TINY, tmp_path, cells, threads=1)
    assert [d for _, d in again] == [d for _, d in runs]
    assert {d: (d / "result.json").stat().st_mtime_ns for _, d in again} == stamps, "finished runs skipped"


def test_bench_cost_measures_aggregation_for_each_size(fake_data_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    args = argparse.Namespace(defenses="fedavg,krum", sizes="3,6", model="cnn", threads=1,
                              data_dir=str(fake_data_dir), timeout=300.0, out_dir=str(tmp_path))
    assert cmd_bench_cost(args) == 0
    rows = json.loads((tmp_path / "cost.json").read_text())
    assert [(r["defense"], r["updates"]) for r in rows] == [("fedavg", 3), ("fedavg", 6), ("krum", 3), ("krum", 6)]
    assert all(r["ok"] and r["seconds"] > 0 and r["peak_mb"] >= 0 for r in rows)
    assert (tmp_path / "cost.png").read_bytes()[:4] == b"\x89PNG"
    assert "| fedavg |" in capsys.readouterr().out

    args.defenses, args.sizes = "krum", "6,9"  # a later, partial measurement joins the same table
    monkeypatch.setattr(sys, "argv", ["clipfed", "bench-cost", "--defenses", "krum", "--sizes", "6,9"])
    assert cmd_bench_cost(args) == 0
    merged = json.loads((tmp_path / "cost.json").read_text())
    assert [(r["defense"], r["updates"]) for r in merged] == [
        ("fedavg", 3), ("fedavg", 6), ("krum", 3), ("krum", 6), ("krum", 9)]
    assert merged[:3] == rows[:3] and merged[3] != rows[3]
    report = (tmp_path / "cost.md").read_text()
    assert "9 updates" in report
    assert "`clipfed bench-cost --defenses krum --sizes 6,9` at commit" in report
    assert "krum (6, 9)" in report and "fedavg (3, 6)" in report and "krum (3)" in report


@pytest.mark.e2e
@pytest.mark.timeout(2400)  # a hang guard: ~10 min on 2 idle cores, 24 with a benchmark beside it
def test_quick_suite_completes_and_writes_well_formed_outputs(tmp_path: Path) -> None:
    if not (SHARED_ASSETS / "cifar10").exists():
        pytest.skip(f"the quick suite runs on real CIFAR-10; none at {SHARED_ASSETS}")
    out = tmp_path / "quick"
    assert main(["bench", "--suite", "quick", "--out-dir", str(out), "--data-dir", str(SHARED_ASSETS)]) == 0
    rows = list(csv.DictReader((out / "table.csv").open()))
    suite = SUITES["quick"]
    assert {r["row"] for r in rows} == {"fedavg-no-attack", "teacher-only", *suite.defenses}
    for row in rows:
        assert 0.0 <= float(row["ma_mean"]) <= 1.0 and 0.0 <= float(row["asr_mean"]) <= 1.0
    report = (out / "report.md").read_text()
    assert "reference" in report and "![scatter-cifar10-dir0.5](scatter-cifar10-dir0.5.png)" in report
    assert "- runs made at commit `" in report
    for name in ("table.md", "curves-cifar10-dir0.5-badnets.png", "per-class-cifar10-dir0.5-badnets.png"):
        assert (out / name).stat().st_size > 0


def test_unknown_setting_is_refused_naming_the_suites_settings(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    assert main(["bench", "--suite", "quick", "--settings", "cifar100", "--out-dir", str(tmp_path)]) == 2
    assert main(["bench", "--suite", "quick", "--report-only", "--out-dir", str(tmp_path / "empty")]) == 2
    out = capsys.readouterr().err
    assert "cifar100" in out and "cifar10-dir0.5" in out
    assert "--report-only: no run of this plan" in out
    assert not any(tmp_path.iterdir()), "nothing ran"


def _result(ma: float, asr: float, skipped: str = "") -> dict:
    entry = {"round": 1, "detection": {"tp": 0, "fp": 0, "fn": 0}, "server_seconds": 0.1, "round_seconds": 1.0,
             "defense": {"skipped": skipped} if skipped else {}}
    return {"final": {"ma": ma, "asr": asr, "racc": 1 - asr}, "config": {"attack-start-round": 1}, "rounds": [entry]}


def test_paper_table_puts_attacks_side_by_side_and_notes_rounds_a_defense_skipped() -> None:
    rows = [Row("s", "badnets", "fedavg", [_result(0.5, 0.9), _result(0.7, 0.7)]),
            Row("s", "blended", "fedavg", [_result(0.6, 0.4)]),
            Row("s", "badnets", "bulyan", [_result(0.55, 0.05, "needs 19 updates")])]
    table = paper_table(rows)
    assert "| row | badnets | blended |" in table
    assert "| fedavg | 0.600 / 0.800 / 0.200 | 0.600 / 0.400 / 0.600 |" in table
    assert "| bulyan | 0.550 / 0.050 / 0.950 **completed, NEVER AGGREGATED** | n/a |" in table
    assert skipped_notes(rows) == "- bulyan (s, badnets): kept the previous model in 1 of 1 rounds (needs 19 updates)\n"
    assert skipped_notes(rows[:2]) == ""


def _scored_round(malicious: list[int], combined: list[float], sybil: list[float]) -> dict:
    return {"round": 1, "malicious": malicious,
            "defense": {"scores": {"partition": [0, 1, 2, 3], "combined": combined, "sybil": sybil}}}


def test_separability_reports_auc_per_signal_and_the_best_recall_at_the_target_precision() -> None:
    # attacker 3 outscores everyone on `combined` in round one; in round two benign client 0 ties
    # attacker 1 at the top, so no threshold reaches recall 1.0 at precision 0.8
    rounds = [_scored_round([3], [0.1, 0.2, 0.3, 5.0], [1.0, 1.0, 1.0, 1.0]),
              _scored_round([1], [4.0, 4.0, 0.0, 0.1], [0.0, 2.0, 1.0, 3.0])]
    rows = [Row("s", "badnets", "clipfed", [{"rounds": rounds}]),
            Row("s", "badnets", "fedavg", [{"rounds": [{"round": 1, "malicious": [3], "defense": {}}]}])]
    table = separability_table(rows)
    assert table.count("\n") == 3, "a row without scores (FedAvg) is left out"
    # combined: attackers {5.0, 4.0} vs benign {0.1,0.2,0.3,4.0,0.0,0.1}: 11.5 of 12 pairs
    assert "| s | badnets | clipfed | 2 / 8 | combined 0.96, sybil 0.67 | 0.50 (combined >= 5.00) |" in table
    assert separability_table(rows[1:]) == ""
    ranked_low = [Row("s", "badnets", "clipfed", [{"rounds": [_scored_round([3], [1.0, 2.0, 3.0, 0.5], [0.0] * 4)]}])]
    assert "| 0.00 (no threshold reaches the precision) |" in separability_table(ranked_low)

    # a run resumed across the change that records every signal: `kl` only in its later round,
    # scored on that round's labels alone (not a length mismatch with every round's)
    later = _scored_round([1], [4.0, 5.0, 0.0, 0.1], [0.0, 2.0, 1.0, 3.0])
    later["defense"]["scores"]["kl"] = [0.0, 3.0, 1.0, 2.0]
    mixed = separability_table([Row("s", "badnets", "clipfed", [{"rounds": [rounds[0], later]}])])
    assert "combined 1.00, sybil 0.67, kl 1.00 |" in mixed, mixed

    # a run with history: the best recall reads the running score, which the exclusion reads
    for entry, running in zip(rounds, ([0.1, 0.2, 0.3, 5.0], [2.0, 4.5, 0.0, 0.1]), strict=True):
        entry["defense"]["scores"]["running"] = running
    history = separability_table([Row("s", "badnets", "clipfed", [{"rounds": rounds}])])
    assert "running 1.00 | 1.00 (running >= 4.50) |" in history, history
    rounds[0]["defense"]["scores"]["low"] = [0.0, 0.0, 0.0, 0.0]
    rounds[1]["defense"]["scores"]["low"] = [0.0, 0.0, 0.0, 0.0]
    two_sided = separability_table([Row("s", "badnets", "clipfed", [{"rounds": rounds}])])
    assert "| n/a (a two-sided rule: `clipfed bench-replay` sweeps both thresholds) |" in two_sided, two_sided


def test_report_says_which_commits_made_the_runs() -> None:
    results = [{"versions": {"git_commit": "a" * 40}}, {"versions": {"git_commit": "a" * 40}},
               {"versions": {"git_commit": "b" * 40}}, {}]
    assert run_commits_line(results) == (f"- runs made at commit `{'a' * 12}` (2 runs), `{'b' * 12}` (1 run), "
                                         "`unknown` (1 run)")


def test_a_finished_run_of_another_clipfed_version_is_not_reused(tmp_path: Path) -> None:
    """A suite reuses a run only if this code would compute the same numbers (same config hash
    and clipfed version): DBA's parts changed shape in 0.2.0 and old DBA rows must be rerun."""
    from clipfed import __version__
    from clipfed.bench.runner import finished
    from clipfed.config import RunConfig

    cfg = RunConfig()
    result = {"status": "completed", "config_hash": cfg.config_hash(), "versions": {"clipfed": __version__}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert finished(tmp_path, cfg)
    result["versions"]["clipfed"] = "0.1.0"
    (tmp_path / "result.json").write_text(json.dumps(result))
    assert not finished(tmp_path, cfg)


def test_the_paper_suite_is_the_field_setting_and_fits_its_stated_gpu_hours() -> None:
    from clipfed.bench.suites import PAPER_GPU_HOURS, PAPER_ROUND_SECONDS

    suite = SUITES["paper"]
    cells = plan(suite)
    rounds = sum(suite.pretrain_rounds if c.pretrain else suite.base["num-server-rounds"] for c in cells)
    assert rounds * PAPER_ROUND_SECONDS / 3600 == pytest.approx(PAPER_GPU_HOURS)
    assert f"about {PAPER_GPU_HOURS:.0f} GPU-hours" in suite.description
    cfg = cells[-1].config(suite, Path("/tmp/x"))
    assert (cfg.model, cfg.num_clients, cfg.clients_per_round, cfg.partition, cfg.dirichlet_alpha) == (
        "resnet18", 100, 10, "dirichlet", 0.5)
    assert (cfg.local_epochs, cfg.batch_size, cfg.augment, cfg.device) == (2, 64, True, "auto")


def test_columns_that_stamp_one_trigger_share_their_control_runs(fake_data_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With no attacker (FedAvg without attack) or no client training (teacher only), a column
    only decides the trigger ASR is measured with: pgd's control rows are BadNets' runs, made once.
    A learned trigger (re-derived with the column's keys) or a window of its own keeps its own."""
    assert control_of("pgd", {"attack": "pgd", "pgd-eps": 0.5}) == ("badnets", {"attack": "badnets"})
    assert control_of("constrain-scale", {}) == control_of("clipfed-aware", {}) == ("badnets", {"attack": "badnets"})
    assert control_of("pgd", {"attack-data": "blended"}) == ("blended", {"attack": "blended"})
    a3fl = {"attack": "a3fl", "a3fl-outer-epochs": 20}
    assert control_of("a3fl", a3fl) == ("a3fl", a3fl) and control_of("f3ba", {}) == ("f3ba", {})
    big = {"attack": "badnets", "patch-size": 8, "pgd-eps": 0.5}  # its own trigger: its own controls
    assert control_of("big-patch", big) == ("big-patch", {"attack": "badnets", "patch-size": 8})
    shot = {"attack": "badnets", "attack-start-round": 3, "attack-end-round": 3}
    assert control_of("single-shot", shot) == ("single-shot", shot)

    durable = SUITES["durable"]
    names = {(c.row, c.attack): c.config(durable, Path("/x"), "/w").run_name for c in plan(durable) if not c.pretrain}
    for row in ("fedavg-no-attack", "teacher-only", "teacher-only-strong-teacher"):
        assert names[(row, "pgd")] == names[(row, "badnets")] == names[(row, "clipfed-aware")], row
        assert len({names[(row, a)] for a in ("badnets", "a3fl", "f3ba", "single-shot")}) == 4, row
    assert names[("clipfed", "pgd")] != names[("clipfed", "badnets")]

    monkeypatch.setenv("CLIPFED_DATA_DIR", str(fake_data_dir))
    suite = Suite(**{**TINY.__dict__, "defenses": ("fedavg",), "attacks": ("badnets", "pgd")})
    cells = plan(suite)
    runs = run_suite(suite, tmp_path, cells, threads=1, workers=2)
    folders = dict(((cell.row, cell.attack), run_dir) for cell, run_dir in runs)
    assert folders[("fedavg-no-attack", "pgd")] == folders[("fedavg-no-attack", "badnets")]
    assert folders[("teacher-only", "pgd")] == folders[("teacher-only", "badnets")]
    assert folders[("fedavg", "pgd")] != folders[("fedavg", "badnets")]
    assert len(list((tmp_path / "runs").iterdir())) == 5, "pretrain, 2 shared controls, 2 FedAvg runs"
    rows = collect(runs)
    assert len({r["run_name"] for row in rows for r in row.results}) == 4, "6 rows of 4 runs (+ the warm start)"
    assert [(r.row, r.attack) for r in rows if r.attack == "pgd"] == [
        ("fedavg-no-attack", "pgd"), ("teacher-only", "pgd"), ("fedavg", "pgd")]
    found, missing = existing_runs(suite, cells, tmp_path)
    assert found == runs and missing == []


@pytest.mark.parametrize("committed", [
    "bench-standard/runs/cifar10-dir0.5--fedavg--badnets--s0-23b3cf2c",
    "bench-standard/runs/cifar10lt-dir0.5--fedavg--badnets--s0-915c4a65",
    "bench-durable/runs/cifar10-dir0.5--clipfed--badnets--s0-3d231298",
    "bench-durable/runs/cifar10-dir0.5--flame--pgd--s0-21547110",
])
def test_suites_still_plan_the_configs_of_their_committed_runs(committed: str) -> None:
    """A suite's setting edited for another suite (the durable CIFAR-10-LT's 4 local epochs once
    reached the standard suite's LT setting too) changes the config hashes of every run already
    made: `clipfed bench` would then rerun them all instead of reusing them."""
    run = Path(__file__).resolve().parents[1] / "docs" / committed
    result = json.loads((run / "result.json").read_text())
    suite = SUITES[committed.split("/")[0].removeprefix("bench-")]
    setting, row, attack, seed = run.name.rsplit("-", 1)[0].split("--")
    cell = next(c for c in plan(suite, attacks=[attack], settings=[setting], seeds=[int(seed[1:])], variants=[])
                if c.row == row)
    cfg = cell.config(suite, Path(result["config"]["out-dir"]).parent, result["config"]["init-model"])
    assert (cfg.run_name, cfg.config_hash()) == (run.name, result["config_hash"])


def test_the_durable_long_tail_targets_its_rarest_class(tmp_path: Path) -> None:
    """With LT's head class as the target a clean model already sends a fifth of the triggered
    images there (ASR's clean floor 0.21 in the first LT runs), so the durable LT setting targets
    the class with the fewest training images, in every run of it, controls and warm start
    included; CIFAR-10's settings keep class 0, the target of their committed runs."""
    suite = SUITES["durable"]
    long_tail = suite.settings["cifar10lt-dir0.5"]
    rarest = int(np.argmin(long_tail_counts(np.full(10, 5000), long_tail["imbalance-factor"])))
    for cell in plan(suite, settings=["cifar10lt-dir0.5", "cifar10-dir0.5"], variants=[]):
        expected = rarest if cell.setting == "cifar10lt-dir0.5" else 0
        assert cell.config(suite, tmp_path).target_label == expected, cell.name
