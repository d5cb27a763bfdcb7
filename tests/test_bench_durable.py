"""The durable protocol: planning (window, single shot, budgets, per-seed warm starts trained to a
plateau, refusal of unregistered attacks), its per-run metrics on synthetic result.json files, and
tables and plots a reader can read (teacher, seeds, status, one colour and marker per row)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from clipfed.bench import report, runner
from clipfed.bench.durable import AFTER, durable_metrics
from clipfed.bench.report import Row, collect, durable_table, markdown_table, plot, warm_start_lines
from clipfed.bench.runner import Cell, plan, run_pretrain, single_shot_round
from clipfed.bench.style import canonical_order, row_styles
from clipfed.bench.suites import (
    A3FL_DURABLE_KEYS,
    DURABLE_CPU_HOURS,
    DURABLE_CPU_LT_HOURS,
    DURABLE_CPU_WINDOW,
    DURABLE_GPU_HOURS,
    SUITES,
    AttackVariant,
    Plateau,
    Suite,
    Window,
    a3fl_passes,
)
from clipfed.checks import node_config_problems
from clipfed.config import NODE_KEYS, RunConfig
from clipfed.data import malicious_clients
from clipfed.defense.sampler import draw
from clipfed.errors import UserError

TINY_DURABLE = Suite(
    name="tiny-durable", description="test", seeds=(0, 1), pretrain_rounds=2, defenses=("fedavg", "median"),
    attacks=("badnets", "shot"), settings={"iid": {"partition": "iid"}},
    base={"num-clients": 20, "num-malicious": 2, "fraction-train": 0.5, "batch-size": 16},
    pretrain_per_seed=True, window=Window(attack_rounds=10, clean_rounds=3),
    attack_variants={"shot": AttackVariant({"attack": "badnets", "attack-update": "scaling", "num-malicious": 10},
                                           single_shot=5)},
    budgets={"strong": {"attack-epochs": 3, "attack-lr": 0.05}, "equal": {}},
)


def _configs(cells: list[Cell], suite: Suite = TINY_DURABLE) -> list[RunConfig]:
    return [cell.config(suite, Path("/tmp/x")) for cell in cells]


def test_durable_plan_warm_starts_per_seed_and_attacks_in_the_window_with_the_budget() -> None:
    cells = plan(TINY_DURABLE)
    pretrain = [c for c in cells if c.pretrain]
    assert [(c.setting, c.seed) for c in pretrain] == [("iid", 0), ("iid", 1)]
    assert {c.warm_key(TINY_DURABLE) for c in cells} == {("iid", 0), ("iid", 1)}
    by_name = {c.name: cfg for c, cfg in zip(cells, _configs(cells), strict=True)}
    attacked = by_name["iid--median--badnets--s0"]
    assert (attacked.attack_start_round, attacked.attack_end_round, attacked.num_server_rounds) == (1, 10, 13)
    assert (attacked.attack_epochs, attacked.attack_lr, attacked.num_malicious) == (3, 0.05, 2)
    clean = by_name["iid--fedavg-no-attack--badnets--s0"]
    assert (clean.num_malicious, clean.attack_epochs, clean.num_server_rounds) == (0, 0, 13), "shared by budgets"
    warm = by_name["iid--pretrain--none--s1"]
    assert (warm.attack, warm.num_malicious, warm.num_server_rounds, warm.seed) == ("none", 0, 2, 1)
    equal = {c.name: cfg for c, cfg in zip(cells, _configs(plan(TINY_DURABLE, budget="equal")), strict=True)}
    assert equal["iid--median--badnets--s0"].attack_epochs == 0


def test_single_shot_attacks_in_the_one_round_that_samples_exactly_k_attackers() -> None:
    cells = [c for c in plan(TINY_DURABLE, seeds=[0, 1]) if c.attack == "shot" and c.row == "fedavg"]
    for cfg in _configs(cells):
        shot = cfg.attack_start_round
        assert cfg.attack_end_round == shot and cfg.num_server_rounds == shot + 3
        assert (cfg.attack, cfg.attack_update, cfg.num_malicious) == ("badnets", "scaling", 10)
        sampled = draw(cfg.seed, shot, list(range(20)), cfg.clients_per_round)
        assert len(malicious_clients(cfg) & set(sampled)) == 5
        earlier = [len(malicious_clients(cfg) & set(draw(cfg.seed, r, list(range(20)), 10))) for r in range(1, shot)]
        assert 5 not in earlier, "the first such round"
    with pytest.raises(UserError, match="no round of 1..4 samples exactly 9 of the 2 malicious"):
        single_shot_round({"num-clients": 20, "num-malicious": 2, "fraction-train": 0.5}, 9, 4)


def test_plan_refuses_an_unregistered_attack_and_an_unknown_budget_before_anything_runs() -> None:
    suite = Suite(**{**TINY_DURABLE.__dict__, "attacks": ("badnets", "not-yet-an-attack", "shot")})
    with pytest.raises(UserError, match=r"attack\(s\) not-yet-an-attack not registered .*--attacks badnets,shot"):
        plan(suite)
    assert plan(suite, attacks=["badnets"])
    with pytest.raises(UserError, match="--budget huge: unknown for suite 'tiny-durable'; allowed: strong, equal"):
        plan(TINY_DURABLE, budget="huge")


def test_the_durable_suites_are_sized_as_stated() -> None:
    cpu, gpu = SUITES["durable"], SUITES["durable-gpu"]
    assert "CPU" in cpu.description and "W=20 then D=30" in cpu.description
    assert "GPU" in gpu.description and "W=100 then D=100" in gpu.description
    for suite in (cpu, gpu):
        assert suite.window is not None and suite.window.clean_rounds >= max(AFTER), "ASR at +25 can be read"
    attacks = [a for a in cpu.attacks if a in SUITES["durable"].attack_variants or a in ("badnets", "pgd")]
    for suite, model, rounds in ((cpu, "cnn", 50), (gpu, "resnet18", 200)):
        cfg = next(c for c in plan(suite, attacks=attacks) if c.row == "clipfed").config(suite, Path("/tmp/x"))
        assert (cfg.model, cfg.num_clients, cfg.clients_per_round, cfg.num_malicious, cfg.eval_samples) == (
            model, 100, 10, 10, 0)
        assert cfg.num_server_rounds == rounds and cfg.attack_epochs == 3 * cfg.local_epochs
        shot = next(c for c in plan(suite, attacks=["single-shot"]) if c.row == "fedavg").config(suite, Path("/x"))
        assert shot.attack_update == "scaling" and shot.attack_start_round == shot.attack_end_round
    # issue 20's second split: CIFAR-10-LT with its own warm start, selectable with --settings
    lt = plan(cpu, attacks=["badnets"], settings=["cifar10lt-dir0.5"], variants=[])
    assert [c.row for c in lt] == ["pretrain", "fedavg-no-attack", "teacher-only", *cpu.defenses]
    cfg = lt[-1].config(cpu, Path("/tmp/x"))
    assert (cfg.dataset, cfg.imbalance_factor, cfg.dirichlet_alpha, cfg.num_clients) == ("cifar10-lt", 0.01, 0.5, 100)
    # 4 epochs over its ~112-image shards (about the CIFAR-10 setting's 450 images a round); BackFed's 3x stays 3x
    assert (cfg.local_epochs, cfg.attack_epochs, cfg.attack_lr) == (4, 12, 0.05)
    assert lt[0].config(cpu, Path("/tmp/x")).local_epochs == 4, "its warm start trains as its clients do"
    assert plan(cpu, attacks=["badnets"], settings=["cifar10lt-dir0.5"], variants=[],
                budget="equal")[-1].config(cpu, Path("/tmp/x")).attack_epochs == 0, "equal: the benign epochs"
    assert "4 local epochs over its smaller shards" in cpu.description
    assert {c.setting for c in plan(cpu, attacks=["badnets"], variants=[])} == {"cifar10-dir0.5", "cifar10lt-dir0.5"}


def test_durable_suites_bound_pgd_near_a_benign_update_and_make_a3fl_feasible_stating_both() -> None:
    for suite, eps in ((SUITES["durable"], 0.5), (SUITES["durable-gpu"], 1.0)):
        cells = plan(suite, attacks=["pgd", "a3fl", "badnets"])
        by_name = {c.name: c.config(suite, Path("/tmp/x")) for c in cells}
        pgd, a3fl = by_name["cifar10-dir0.5--clipfed--pgd--s0"], by_name["cifar10-dir0.5--clipfed--a3fl--s0"]
        assert (pgd.attack, pgd.pgd_eps) == ("pgd", eps)
        assert (a3fl.attack, a3fl.a3fl_outer_epochs, a3fl.a3fl_adv_every) == ("a3fl", 20, 5)
        floor = by_name["cifar10-dir0.5--fedavg-no-attack--a3fl--s0"]
        assert (floor.a3fl_outer_epochs, floor.num_malicious) == (20, 0), "the floor re-derives the same trigger"
        badnets = by_name["cifar10-dir0.5--clipfed--badnets--s0"]
        assert (badnets.pgd_eps, badnets.a3fl_outer_epochs) == (2.0, 200), "only their own columns"
        assert f"pgd-eps {eps:g}, near a benign update's L2 norm" in suite.description
        assert "a departure from its official defaults (200 and 1)" in suite.description
    assert "1394 passes over a shard instead of 50" in SUITES["durable"].description
    assert "would take about 63 hours on CIFAR-10 (these: 2.2)" in SUITES["durable"].description
    assert (f"about {DURABLE_CPU_HOURS:.0f} hours of rounds and A3FL trigger searches run by run on CIFAR-10 "
            f"and {DURABLE_CPU_LT_HOURS:.0f} on CIFAR-10-LT") in SUITES["durable"].description
    rows = 14  # 6 defenses, 2 controls, 2 strong-teacher rows, 4 ablation rows (lean, history, two-sided, better-of)
    runs = rows * 7 - 3 * 3  # pgd, constrain-scale and clipfed-aware share BadNets' 3 control runs
    base = runs * DURABLE_CPU_WINDOW.rounds * (12 * 450 / 1_500 + 19_000 / 3_800 + 2.5 + 1) / 3600
    searches = 20 * (rows + rows - 1) * 50 * 450 / 1_500 / 3600  # server + 1 expected attacker, 12 attacked rows
    assert pytest.approx(base + searches) == DURABLE_CPU_HOURS
    shard = 11_165 / 100  # CIFAR-10-LT's clients' images (long_tail_counts of the 4,500 a class left) over 100
    base = runs * DURABLE_CPU_WINDOW.rounds * (12 * 4 * 112 / 1_500 + 19_000 / 3_800 + 2.5 + 1) / 3600  # 4 epochs
    searches = 20 * (rows + rows - 1) * 50 * 112 / 1_500 / 3600
    assert round(shard) == 112 and pytest.approx(base + searches) == DURABLE_CPU_LT_HOURS
    rows = 10  # the GPU suite has no ablation rows
    runs = rows * 7 - 3 * 3
    base = runs * 200 * (24 * 450 / 5_000 + 19_000 / 20_000 + 3.0 + 1) / 3600  # `paper`'s rates
    searches = 100 * (rows + rows - 1) * 50 * 450 / 5_000 / 3600
    assert pytest.approx(base + searches) == DURABLE_GPU_HOURS


def test_a3fl_passes_counts_the_passes_its_search_makes() -> None:
    from torch import nn

    from clipfed.attacks.data.a3fl import A3FL

    assert a3fl_passes({}) == 200 + 199 + 199 * 5 == 1394, "the official defaults"
    assert a3fl_passes(A3FL_DURABLE_KEYS) == 20 + 15 + 3 * 5 == 50
    keys = {"a3fl-outer-epochs": 7, "a3fl-adv-every": 3, "a3fl-adv-epochs": 2, "batch-size": 8}
    calls: list[int] = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 3, 32, 32))
    model.register_forward_hook(lambda *_: calls.append(1))  # deep copies (the adversarial ones) share it
    torch.manual_seed(0)
    attack = A3FL(RunConfig.from_flower({"attack": "a3fl", **keys}))
    attack.search(model, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))  # one batch a pass
    assert len(calls) == a3fl_passes(keys) == 7 + 4 + 2 * 2


def test_attack_end_round_is_the_runs_window_not_a_node_key() -> None:
    """The server re-derives learned triggers by the run's window: a node cannot move its end."""
    assert "attack-end-round" not in NODE_KEYS
    assert any(p.startswith("attack-end-round: unknown node-config key") for p in
               node_config_problems({"partition-id": 0, "attack-end-round": 5}))
    assert RunConfig.from_flower({"attack-end-round": 5}).attack_end_round == 5, "still a run-config key"


def test_plateau_trains_on_until_ma_stops_rising_or_the_cap() -> None:
    rule = Plateau(chunk=10, window=5, min_gain=0.01, max_rounds=40)
    assert rule.next_rounds([0.1 * i for i in range(1, 6)]) == 15, "fewer than two windows: go on"
    assert rule.next_rounds([0.02 * i for i in range(20)]) == 30, "still rising 0.1 a window"
    assert rule.next_rounds([0.5] * 20) is None, "flat: plateau"
    assert rule.next_rounds([0.02 * i for i in range(40)]) is None, "the cap"


def _fake_run(out: Path, calls: list[RunConfig]) -> Any:
    """A stand-in for ``run_cell`` writing a result whose MA rises 0.02 a round up to 0.6."""
    def run_cell(cfg: RunConfig, threads: int) -> tuple[Path, bool, float]:
        calls.append(cfg)
        run_dir = out / cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        rounds = [{"round": r, "ma": min(0.02 * r, 0.6)} for r in range(cfg.num_server_rounds + 1)]
        (run_dir / "result.json").write_text(json.dumps({"run_name": cfg.run_name, "config": cfg.to_flower(),
                                                          "rounds": rounds, "status": "completed"}))
        return run_dir, True, 1.0
    return run_cell


def test_a_warm_start_is_resumed_chunk_by_chunk_until_its_plateau(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[RunConfig] = []
    monkeypatch.setattr(runner, "run_cell", _fake_run(tmp_path, calls))
    cfg = runner.named(RunConfig.from_flower({"num-server-rounds": 20, "attack": "none"}), "s--pretrain--none--s0")
    run_dir, ran, seconds = run_pretrain(cfg, Plateau(chunk=10, window=10, min_gain=0.01, max_rounds=100), 1)
    # MA reaches 0.6 at round 30: the window 31-40 gains 0.2 - ... over 21-30, 41-50 gains nothing
    assert [c.num_server_rounds for c in calls] == [20, 30, 40, 50]
    assert all(c.resume_from == str(tmp_path / p.run_name) for c, p in zip(calls[1:], calls, strict=False))
    assert run_dir.name == calls[-1].run_name and run_dir.name.startswith("s--pretrain--none--s0-")
    assert ran and seconds == 4.0
    lines = warm_start_lines([(Cell("s", "pretrain", "none", 0, {}, True), run_dir)],
                             Plateau(chunk=10, window=10, min_gain=0.01, max_rounds=100))
    assert "50 rounds of clean FedAvg, MA 0.600" in lines and "+0.00 points" in lines and "plateau reached" in lines


# -- per-run metrics on synthetic result.json files ------------------------------------------------
def _entry(r: int, asr: float, malicious: list[int], det: tuple[int, int, int, int], skipped: str = "") -> dict:
    return {"round": r, "ma": 0.6, "asr": asr, "racc": 0.5, "per_class_acc": [0.6] * 10, "diverged": False,
            "malicious": malicious, "detection": dict(zip(("tp", "fp", "fn", "tn"), det, strict=True)),
            "server_seconds": 0.1, "round_seconds": 1.0, "defense": {"skipped": skipped} if skipped else {}}


_RUN_NUMBERS = itertools.count()  # every fake run its own folder name, as real runs have


def _result(asrs: list[float], end: int = 4, seed: int = 0, malicious: dict[int, list[int]] | None = None,
            detection: dict[int, tuple[int, int, int, int]] | None = None, status: str = "completed",
            teacher: bool = False, skipped: str = "") -> dict:
    malicious, detection = malicious or {}, detection or {}
    rounds = [_entry(r, a, malicious.get(r, []), detection.get(r, (0, 0, 0, 10)), skipped if r else "")
              for r, a in enumerate(asrs)]
    result = {"run_name": f"run-{next(_RUN_NUMBERS)}-s{seed}", "seed": seed, "status": status, "rounds": rounds,
              "config": {"attack-start-round": 1, "attack-end-round": end}, "final": {
                  k: rounds[-1][k] for k in ("ma", "asr", "racc", "per_class_acc")}}
    if teacher:
        result["server_data"] = {"teacher": "reference:cnn:pool-x", "reference_teacher": True}
    return result


FLOOR = _result([0.05] * 11, end=4)
#              r0   r1   r2   r3    r4    r5   r6   r7   r8    r9    r10
BACKDOOR = [0.0, 0.5, 0.9, 0.95, 0.97, 0.9, 0.6, 0.3, 0.09, 0.08, 0.06]
DETECTION = {1: (1, 1, 0, 8), 2: (0, 2, 0, 8), 3: (1, 0, 1, 8), 4: (0, 0, 1, 9), 6: (0, 1, 0, 9)}
ATTACKERS = {1: [3], 3: [3, 7], 4: [5]}  # round 2 sampled no attacker although it is in the window


def test_lifespan_asr_after_the_window_and_their_nulls() -> None:
    m = durable_metrics(_result(BACKDOOR), FLOOR)
    assert m.values["asr_end"] == 0.97 and m.values["asr_max"] == 0.97 and m.values["floor"] == 0.05
    assert m.values["lifespan"] == 4, "round 8 is the first within 0.05 of the floor, 4 after the window"
    for k in (10, 25):
        assert m.values[f"asr_plus{k}"] is None
        assert m.unavailable[f"asr_plus{k}"] == (f"the run ends at round 10, 6 rounds after the window; +{k} is "
                                                 f"round {4 + k}")
    longer = durable_metrics(_result(BACKDOOR + [0.05] * 10), _result([0.05] * 21))
    assert longer.values["asr_plus10"] == 0.05 and longer.values["asr_plus25"] is None

    lasting = durable_metrics(_result([0.0] + [0.9] * 10), FLOOR)
    assert lasting.values["lifespan"] is None
    assert lasting.unavailable["lifespan"].startswith("ASR never came back within 0.05 of the floor 0.050 in the 6")
    gone = durable_metrics(_result([0.0, 0.2, 0.1, 0.05, 0.04] + [0.05] * 6), FLOOR)
    assert gone.values["lifespan"] == 0, "already back when the window closed"
    no_floor = durable_metrics(_result(BACKDOOR), None)
    assert no_floor.values["lifespan"] is None and "no FedAvg-without-attack run" in no_floor.unavailable["lifespan"]
    open_window = durable_metrics(_result(BACKDOOR, end=0), FLOOR)
    assert open_window.values["asr_end"] is None and "attack-end-round is 0" in open_window.unavailable["asr_end"]
    assert open_window.values["asr_max"] == 0.97
    stopped = durable_metrics(_result(BACKDOOR[:3], status="failed"), FLOOR)
    assert stopped.unavailable["asr_end"] == "the run stopped at round 2 (failed), before the window's end (round 4)"
    assert stopped.values["lifespan"] is None
    assert stopped.unavailable["lifespan"] == ("the run stopped at round 2 (failed), before the window's end "
                                               "(round 4): no round to read it on")
    at_end = durable_metrics(_result(BACKDOOR[:5]), FLOOR)
    assert at_end.values["lifespan"] is None
    assert at_end.unavailable["lifespan"] == ("the run ended at the window's end (round 4) with ASR 0.970, not "
                                              "within 0.05 of the floor 0.050, and has no round after the window")
    assert durable_metrics(_result([*BACKDOOR[:4], 0.04]), FLOOR).values["lifespan"] == 0
    cut = durable_metrics(_result(BACKDOOR[:7], status="stopped"), FLOOR)
    assert cut.unavailable["lifespan"].startswith("ASR never came back within 0.05 of the floor 0.050 in the 2 "
                                                  "rounds after the window (stopped)")


def test_asr_at_plus25_is_read_with_d_at_least_25_rounds() -> None:
    d30 = durable_metrics(_result(BACKDOOR + [0.05] * 20, end=4), _result([0.05] * 31))  # rounds 0..30, end 4
    assert d30.values["asr_plus10"] == 0.05 and d30.values["asr_plus25"] == 0.05
    window = DURABLE_CPU_WINDOW
    rounds = _result([0.5] * (window.attack_rounds + 1) + [0.05] * window.clean_rounds, end=window.attack_rounds)
    assert durable_metrics(rounds, None).values["asr_plus25"] == 0.05, "the CPU suite's own window"


def test_the_clean_floor_is_read_only_from_a_completed_run() -> None:
    for status in ("failed", "stopped"):
        m = durable_metrics(_result(BACKDOOR), {**FLOOR, "status": status})
        assert m.values["floor"] is None and m.values["lifespan"] is None
        why = f"the FedAvg-without-attack run is {status}, not completed: its ASR is no floor"
        assert m.unavailable["floor"] == why and m.unavailable["lifespan"] == f"no clean floor: {why}"
    rows = [Row("iid", "badnets", "fedavg-no-attack", [{**FLOOR, "status": "failed"}]),
            Row("iid", "badnets", "median", [_result(BACKDOOR)])]
    assert "n/a (the FedAvg-without-attack run is failed, not completed: its ASR is no floor)" in durable_table(rows)


def test_detection_is_pooled_over_the_attacked_rounds_with_its_coverage_and_fpr_on_attack_free_rounds() -> None:
    m = durable_metrics(_result(BACKDOOR, malicious=ATTACKERS, detection=DETECTION), FLOOR)
    # attacked rounds 1, 3, 4: tp 1+1+0, fp 1+0+0, fn 0+1+1; round 4 excluded nobody (no precision)
    assert m.values["precision"] == pytest.approx(2 / 3) and m.values["recall"] == pytest.approx(2 / 4)
    assert m.values["f1"] == pytest.approx(4 / 7)
    assert [m.values[k] for k in ("attacked_rounds", "precision_rounds", "recall_rounds", "f1_rounds")] == [3, 2, 3, 3]
    assert [r["round"] for r in m.per_round] == [1, 3, 4] and m.per_round[2]["precision"] is None
    assert m.per_round[0]["precision"] == 0.5, "each round's own values stay in per_round"
    # attack-free rounds 2 (in the window) and 5-10: fp 2 + 1 over fp + tn = 10 + 9 + 1 + 5 * 10
    assert m.values["fpr"] == pytest.approx(3 / 70)
    # one correct exclusion in 20 attacked rounds: a per-round mean would say precision 1.0 and stop there
    once = durable_metrics(_result([0.5] * 21, end=20, malicious={r: [3] for r in range(1, 21)},
                                   detection={1: (1, 0, 0, 9), **{r: (0, 0, 1, 9) for r in range(2, 21)}}), None)
    assert once.values["precision"] == 1.0 and (once.values["precision_rounds"], once.values["attacked_rounds"]) == (
        1, 20)
    assert once.values["recall"] == pytest.approx(1 / 20) and once.values["f1"] == pytest.approx(2 / 21)
    clean = durable_metrics(FLOOR, None)
    assert clean.values["recall"] is None and clean.values["attacked_rounds"] == 0
    assert clean.unavailable["recall"] == "no round in which a sampled client attacked"
    assert clean.values["fpr"] == 0.0
    every_round = durable_metrics(_result([0.0, 0.5], malicious={1: [3]}, detection={1: (0, 0, 1, 9)}), None)
    assert every_round.values["precision"] is None and every_round.values["recall"] == 0.0
    assert every_round.unavailable["precision"] == "the defense excluded no client in any of the 1 attacked rounds"
    assert every_round.unavailable["fpr"] == "no attack-free round (every round sampled an attacker)"
    failed = durable_metrics({"rounds": [], "status": "failed"}, None)
    assert failed.values["attacked_rounds"] == 0 and failed.values["precision"] is None


# -- tables and plots --------------------------------------------------------------------------------
def _rows() -> list[Row]:
    attacked = [_result(BACKDOOR, malicious=ATTACKERS, detection=DETECTION, seed=s, teacher=True) for s in (0, 1)]
    return [Row("iid", "badnets", "fedavg-no-attack", [FLOOR, {**FLOOR, "seed": 1, "run_name": "floor-s1"}]),
            Row("iid", "badnets", "clipfed", attacked),
            Row("iid", "badnets", "rlr", [_result(BACKDOOR), _result(BACKDOOR[:3], seed=1, status="failed")]),
            Row("iid", "badnets", "bulyan", [_result([0.0] * 11, skipped="needs 7 updates")]),
            Row("iid", "badnets", "median", [_result(BACKDOOR)])]  # identical to rlr's seed 0


def test_tables_name_teacher_seeds_and_status_and_mark_rows_in_the_table() -> None:
    table = markdown_table(_rows())
    assert table.startswith("Teacher: reference teacher (offline stand-in, not a CLIP); seeds: 0, 1; runs: "
                            "6 completed, 1 failed, 1 completed, NEVER AGGREGATED.")
    assert "| iid | badnets | clipfed | reference teacher (offline stand-in, not a CLIP) | 0,1 | completed |" in table
    assert "| iid | badnets | rlr | none | 0,1 | **1 completed, 1 failed** | 0.600 | 0.060 |" in table  # not averaged
    assert "| iid | badnets | bulyan | none | 0 | **completed, NEVER AGGREGATED** |" in table
    durable = durable_table(_rows())
    assert "Attack windows (first-last round): 1-4" in durable
    assert ("| iid | badnets | clipfed | reference teacher (offline stand-in, not a CLIP) | 0,1 | completed | "
            "0.970 ± 0.000 | 0.970 ± 0.000 | n/a (the run ends at round 10, 6 rounds after the window; +10 is "
            "round 14) |") in durable
    assert ("| 0.050 ± 0.000 | 4.0 ± 0.0 | 0.667 ± 0.000 [4/6] | 0.500 ± 0.000 [6/6] | 0.571 ± 0.000 [6/6] | "
            "0.043 ± 0.000 |") in durable, "pooled detection, [rounds adding to it / attacked rounds] over the seeds"
    assert "det. precision, pooled [rounds]" in durable
    assert "n/a (the run stopped at round 2 (failed), before the window's end (round 4))" not in durable, \
        "rlr's seed 0 has a value: the failed seed is counted, not shown as the row's value"
    assert "0.970 (1/2 seeds n/a)" in durable

    # read mid-suite: a row whose run is still running shows its rounds so far, marked as such
    running = _result(BACKDOOR[:7], malicious=ATTACKERS, detection=DETECTION, status="running")
    partial = durable_table([_rows()[0], Row("iid", "badnets", "fedavg", [running])])
    assert "| **running** | 0.970 (partial: running) | 0.970 (partial: running) | n/a (the run ends at round 6 " \
           "(running), 2 rounds after the window; +10 is round 14) |" in partial, partial
    for status in ("stopped", "interrupted"):
        stopped = durable_table([_rows()[0], Row("iid", "badnets", "fedavg", [{**running, "status": status}])])
        assert f"| **{status}** | 0.970 (partial: {status}) | 0.970 (partial: {status}) |" in stopped, stopped
    failed = durable_table([_rows()[0], Row("iid", "badnets", "fedavg", [{**running, "status": "failed"}])])
    assert "partial" not in failed, "a failed run's rounds are not the row's numbers"


def test_a_run_that_left_no_result_is_a_failed_row(tmp_path: Path) -> None:
    rows = collect([(Cell("iid", "krum", "badnets", 0, {}), tmp_path / "never-started")])
    assert rows[0].status == "failed (no result.json)" and "**failed (no result.json)**" in markdown_table(rows)
    assert "| n/a (run failed (no result.json)) |" in durable_table(rows)


def test_styles_give_every_row_its_own_colour_and_marker_fixed_by_name() -> None:
    every = row_styles(canonical_order())
    colours = [str(s["color"]) for s in every.values()]
    markers = [s["marker"] for s in every.values()]
    assert len(set(colours)) == len(colours) and len(set(markers)) == len(markers)
    assert every["clipfed"]["color"] == "black" and every["clipfed"]["color"] != every["rlr"]["color"]
    cost_plot = row_styles(["fedavg", "rlr", "clipfed"])  # another plot, other rows: the same look
    assert all(cost_plot[n] == every[n] for n in cost_plot)
    strangers = row_styles(["my-variant", "other-variant", *canonical_order()])
    assert len({str(s["color"]) for s in strangers.values()}) == len(strangers)
    assert len({s["marker"] for s in strangers.values()}) == len(strangers)


def test_plots_shade_the_window_and_name_teacher_seeds_status_classes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    figures: dict[str, Any] = {}
    original = report._save

    def keep(fig: Any, path: Path) -> Path:
        figures[path.name] = {"title": fig._supxlabel.get_text().replace("\n", " "),
                              "legends": [t.get_text() for lg in fig.legends for t in lg.get_texts()],
                              "ax_legends": [ax.get_legend() for ax in fig.axes]}
        fig.canvas.draw()  # the layout must resolve, as it does when saved
        figures[path.name]["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        figures[path.name]["lines"] = [(str(line.get_color()), line.get_marker()) for line in fig.axes[0].lines]
        figures[path.name]["spans"] = len(fig.axes[0].patches)
        return original(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    written = plot(_rows(), tmp_path)
    assert {p.name for p in written} == {"curves-iid-badnets.png", "per-class-iid-badnets.png", "scatter-iid.png"}
    for name, fig in figures.items():
        assert "reference teacher (offline stand-in, not a CLIP)" in fig["title"] and "seeds: 0, 1" in fig["title"]
        assert "1 failed" in fig["title"], name
        assert all(legend is None for legend in fig["ax_legends"]), "one legend, outside the axes"
    curves = figures["curves-iid-badnets.png"]
    assert curves["spans"] == 1 and "attack window" in curves["legends"]
    assert "rlr [1 completed, 1 failed]" in curves["legends"]
    assert "bulyan [completed, NEVER AGGREGATED]" in curves["legends"]
    assert len(set(curves["lines"])) == len(curves["lines"]) == 5, "rlr and median coincide but differ in look"
    assert figures["per-class-iid-badnets.png"]["ticks"][:3] == ["airplane", "automobile", "bird"]


def test_variant_rows_are_selected_by_name_and_the_strong_teacher_rows_set_the_teacher_pool() -> None:
    from clipfed.errors import UserError

    suite = SUITES["durable"]
    rows = {c.row for c in plan(suite, attacks=["badnets"]) if not c.pretrain}
    assert {"clipfed-strong-teacher", "teacher-only-strong-teacher"} <= rows
    strong = next(c for c in plan(suite, attacks=["badnets"]) if c.row == "clipfed-strong-teacher")
    cfg = strong.config(suite, Path("/tmp/x"))
    assert (cfg.defense, cfg.teacher_pool) == ("clipfed", "train-split")
    configs = {c.row: c.config(suite, Path("/tmp/x")) for c in plan(suite, attacks=["badnets"])}
    lean, history, two_sided = configs["clipfed-lean"], configs["clipfed-history"], configs["clipfed-two-sided"]
    assert (two_sided.clipfed_low_signals, two_sided.clipfed_low_threshold) == ("proto", 2.0)
    assert (lean.defense, lean.clipfed_post_steps, lean.clipfed_probe_size) == ("clipfed", 20, 250)
    assert (history.clipfed_history_weight, history.clipfed_z_threshold) == (0.5, 2.5)
    assert configs["clipfed-better-of"].clipfed_kd_target == "better-of"
    assert not {"clipfed-lean", "clipfed-history", "clipfed-two-sided", "clipfed-better-of"} & set(
        SUITES["durable-gpu"].variants), \
        "CPU-only ablation rows"
    assert not {c.row for c in plan(suite, attacks=["badnets"], variants=[])} & set(suite.variants)
    chosen = {c.row for c in plan(suite, attacks=["badnets"], variants=["teacher-only-strong-teacher"])}
    assert "teacher-only-strong-teacher" in chosen and "clipfed-strong-teacher" not in chosen
    with pytest.raises(UserError, match="--variants: nope not a variant of suite 'durable'"):
        plan(suite, variants=["nope"])
