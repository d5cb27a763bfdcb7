"""A run interrupted after round k and resumed ends with the metrics of an uninterrupted run."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message, MessageType

from clipfed.config import ConfigError, RunConfig
from clipfed.engines.inprocess import InProcessGrid, run_inprocess
from clipfed.runs.checkpoint import CHECKPOINT_FILE, Checkpoint
from clipfed.runs.results import load_result

ROUNDS = 4
CRASH_ROUND = 3


class Interrupted(RuntimeError):
    """Stands for the server process dying in the middle of a round."""


def config(data_dir: Path, out: Path, name: str, **overrides: object) -> RunConfig:
    return RunConfig.from_flower({
        "num-clients": 4, "num-malicious": 1, "num-server-rounds": ROUNDS, "partition": "iid",
        "fraction-train": 0.75, "batch-size": 16, "data-dir": str(data_dir), "out-dir": str(out),
        "run-name": name, **overrides,
    })


def crash_at(monkeypatch: pytest.MonkeyPatch, server_round: int) -> None:
    """Make the grid die when the server sends round ``server_round``'s training messages."""
    original = InProcessGrid.send_and_receive

    def send_and_receive(self: InProcessGrid, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN
               and int(m.content["config"]["server-round"]) == server_round for m in messages):
            raise Interrupted(f"killed during round {server_round}")
        return original(self, messages, timeout=timeout)

    monkeypatch.setattr(InProcessGrid, "send_and_receive", send_and_receive)


def metrics(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Per round: MA, ASR, who took part, who was excluded, and the defense's details (weights)."""
    return [(r["round"], r["ma"], r["asr"], r["participants"], r["excluded"], r["per_class_acc"],
             r["defense"]) for r in result["rounds"]]


@pytest.mark.parametrize("defense", ["fedavg", "foolsgold"])  # foolsgold: cross-round history
def test_resume_after_an_interruption_gives_the_uninterrupted_metrics(
        defense: str, fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = load_result(run_inprocess(config(fake_data_dir, tmp_path, "whole", defense=defense)))

    with monkeypatch.context() as patch:
        crash_at(patch, CRASH_ROUND)
        with pytest.raises(Interrupted):
            run_inprocess(config(fake_data_dir, tmp_path, "broken", defense=defense))
    broken = load_result(tmp_path / "broken")
    assert broken["status"] == "failed"
    assert [r["round"] for r in broken["rounds"]] == list(range(CRASH_ROUND)), "partial result kept"
    assert Checkpoint.load(tmp_path / "broken").server_round == CRASH_ROUND - 1

    resumed_dir = run_inprocess(config(fake_data_dir, tmp_path, "resumed", defense=defense,
                                       **{"resume-from": str(tmp_path / "broken")}))
    resumed = load_result(resumed_dir)
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"]["after_round"] == CRASH_ROUND - 1
    assert metrics(resumed) == metrics(whole)
    assert resumed["final"] == whole["final"]
    assert load_result(tmp_path / "broken") == broken, "the interrupted run's folder is untouched"


def test_resume_refuses_a_changed_config(fake_data_dir: Path, tmp_path: Path) -> None:
    run_inprocess(config(fake_data_dir, tmp_path, "first", **{"num-server-rounds": 1}))
    with pytest.raises(ConfigError, match=r"resume-from: .*lr \(0.01 -> 0.5\)"):
        run_inprocess(config(fake_data_dir, tmp_path, "second", lr=0.5,
                             **{"resume-from": str(tmp_path / "first")}))
    with pytest.raises(ConfigError, match="num-server-rounds: 1, .*already finished round 1"):
        run_inprocess(config(fake_data_dir, tmp_path, "third", **{"num-server-rounds": 1,
                                                                  "resume-from": str(tmp_path / "first")}))
    assert not (tmp_path / "second").exists() and not (tmp_path / "third").exists()


def test_resume_from_a_folder_without_a_checkpoint_names_the_key(fake_data_dir: Path, tmp_path: Path) -> None:
    run = run_inprocess(config(fake_data_dir, tmp_path, "first", **{"num-server-rounds": 1}))
    (run / CHECKPOINT_FILE).unlink()
    with pytest.raises(ConfigError, match=f"resume-from: .* holds no {CHECKPOINT_FILE}"):
        run_inprocess(config(fake_data_dir, tmp_path, "again", **{"resume-from": str(run)}))


def test_init_model_starts_from_another_runs_global_model(fake_data_dir: Path, tmp_path: Path) -> None:
    pretrain = load_result(run_inprocess(config(fake_data_dir, tmp_path, "pretrain", attack="none",
                                                **{"num-server-rounds": 2, "num-malicious": 0})))
    warm = load_result(run_inprocess(config(fake_data_dir, tmp_path, "warm", **{
        "num-server-rounds": 1, "init-model": str(tmp_path / "pretrain")})))
    assert warm["rounds"][0]["per_class_acc"] == pretrain["final"]["per_class_acc"]
    assert warm["init_model"]["after_round"] == 2 and warm["init_model"]["config_hash"] == pretrain["config_hash"]
    with pytest.raises(ConfigError, match="init-model: .* another architecture"):
        run_inprocess(config(fake_data_dir, tmp_path, "wrong", model="resnet20",
                             **{"init-model": str(tmp_path / "pretrain")}))
