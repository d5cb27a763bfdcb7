"""``clipfed bench-replay``: CLIP-Fed's exclusion rule recomputed on a run's recorded scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipfed.bench.replay import Rule, pooled, replay
from clipfed.cli import main
from clipfed.config import RunConfig
from clipfed.errors import UserError


def scored(round_: int, partitions: list[int], proto: list[float], malicious: list[int],
           excluded: list[int]) -> dict:
    return {"round": round_, "malicious": malicious, "excluded": excluded,
            "defense": {"scores": {"partition": partitions, "proto": proto, "sybil": [0.5] * len(partitions)}}}


def result() -> dict:
    """Round 1: attacker 9 stands out and is excluded; honest client 4 is calm. Round 2: 9 returns
    with an ordinary proto score (missed by this round alone) and 4 has one noisy round (a false
    positive at threshold 1.5: combined 2.87). Round 3, attack-free: quiet. Sybil is constant, so
    only proto decides."""
    calm = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    return {"run_name": "toy", "config": RunConfig.from_flower({"defense": "clipfed"}).to_flower(),
            "rounds": [{"round": 0},
                       scored(1, [1, 2, 3, 4, 5, 6, 9], [*calm[:6], 9.0], [9], [9]),
                       scored(2, [1, 2, 3, 4, 5, 6, 9], [*calm[:3], 2.0, *calm[3:5], 0.55], [9], [4]),
                       scored(3, [1, 2, 3, 5, 6, 7, 8], calm, [], [])]}


def test_the_runs_own_rule_gives_its_own_exclusions_and_pooled_detection() -> None:
    r = replay(result(), Rule(("proto", "sybil"), 1.0, 1.5))
    assert (r.same, r.rounds) == (3, 3), "the replay reproduces every round the run decided"
    assert (r.tp, r.fp, r.fn) == (1, 1, 1) and r.precision == r.recall == 0.5
    assert r.fpr == 0.0 and r.clean_benign == 7


def test_history_keeps_the_returning_attacker_and_forgives_the_noisy_round() -> None:
    r = replay(result(), Rule(("proto", "sybil"), 0.5, 1.5))
    assert (r.tp, r.fp, r.fn) == (2, 0, 0), "9's running score stays high; 4's is 0.5 * 2.87 + 0.5 * 0"
    assert r.same == 2


def test_a_signal_the_run_did_not_record_is_named() -> None:
    with pytest.raises(UserError, match="toy round 1: no kl scores recorded; it has proto, sybil"):
        replay(result(), Rule(("kl",), 1.0, 1.5))
    with pytest.raises(UserError, match="no round recorded CLIP-Fed scores"):
        replay({"run_name": "fedavg", "rounds": [{"round": 1}]}, Rule(("proto",), 1.0, 1.5))


def test_the_command_prints_one_row_per_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "result.json").write_text(json.dumps(result()))
    assert main(["bench-replay", str(tmp_path), "--weights", "1,0.5", "--thresholds", "1.5,3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| proto,sybil")]
    assert len(rows) == 4 and rows[0].endswith("| 3 of 3 |")
    assert main(["bench-replay", str(tmp_path), "--signals", "proto,sybil", "--signals", "kl"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]  # after the header
    assert rows[0].startswith("| proto,sybil | 1 | 1.5 | off |"), "every option defaults to the run's"
    assert rows[1] == "| kl | 1 | 1.5 | off | n/a: not recorded in every round |" + " |" * 7
    assert main(["bench-replay", str(tmp_path), "--low-signals", "kl"]) == 0, "the low side's signals too"
    assert "| proto,sybil | 1 | 1.5 | kl > 2 | n/a: not recorded in every round |" in capsys.readouterr().out


@pytest.mark.parametrize(("options", "message"), [
    (["--weights", "0"], "--weights 0: 0 is not a number in (0, 1]"),
    (["--weights", ""], "--weights '': empty"),
    (["--thresholds", "x"], "--thresholds x: x is not a number"),
    (["--signals", "proto,nope"], "--signals 'proto,nope': unknown ['nope']"),
    (["--signals", ","], "--signals ',': empty"),
])
def test_bad_options_are_refused_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             options: list[str], message: str) -> None:
    (tmp_path / "result.json").write_text(json.dumps(result()))
    assert main(["bench-replay", str(tmp_path), *options]) == 2
    assert message in capsys.readouterr().err


def test_the_low_side_finds_an_attacker_that_moved_too_little(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    quiet = {"run_name": "quiet", "config": result()["config"],
             "rounds": [scored(1, [1, 2, 3, 4, 5, 6, 7], [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, -5.0], [7], [])]}
    one_sided = replay(quiet, Rule(("proto", "sybil"), 1.0, 1.5))
    assert (one_sided.fn, one_sided.same) == (1, 1)
    two_sided = replay(quiet, Rule(("proto", "sybil"), 1.0, 1.5, ("proto",), 2.0))
    assert (two_sided.tp, two_sided.fp, two_sided.fn) == (1, 0, 0)
    (tmp_path / "result.json").write_text(json.dumps(quiet))
    assert main(["bench-replay", str(tmp_path), "--low-signals", "", "--low-signals", "proto"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| proto,sybil")]
    assert [r.split(" | ")[3] for r in rows] == ["off", "proto > 2"]
    assert main(["bench-replay", str(tmp_path), "--low-signals", "nope"]) == 2
    assert "--low-signals 'nope': unknown ['nope']" in capsys.readouterr().err


def test_pooled_sums_each_rules_counts_over_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rule = Rule(("proto", "sybil"), 1.0, 1.5)
    one = replay(result(), rule)
    (total,) = pooled([one, one])
    assert (total.tp, total.fp, total.fn, total.clean_benign, total.rounds, total.same, total.runs) == \
        (2, 2, 2, 14, 6, 6, 2)
    assert total.precision == one.precision and total.fpr == one.fpr
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps(result()))
    (tmp_path / "fedavg").mkdir()  # a suite's FedAvg row: no scores, left out and counted
    (tmp_path / "fedavg" / "result.json").write_text(json.dumps({"run_name": "fedavg", "config": {},
                                                                  "rounds": [{"round": 1}]}))
    assert main(["bench-replay", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "fedavg"), "--pooled",
                 "--weights", "1,0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**pooled over 2 runs (left out: 1 runs without CLIP-Fed scores)**") and "toy" not in out
    rows = [line for line in out.splitlines() if line.startswith("| proto,sybil")]
    assert rows == ["| proto,sybil | 1 | 1.5 | off | 0.50 | 0.50 | 0.50 | 0.000 | 2 | 2 | 2 | 6 of 6 (2 runs) |",
                    "| proto,sybil | 0.5 | 1.5 | off | 1.00 | 1.00 | 1.00 | 0.000 | 4 | 0 | 0 | 4 of 6 (2 runs) |"]
