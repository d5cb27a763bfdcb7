"""CLIP-Fed's running scores: a client's combined score averaged over the rounds it was sampled in
(``clipfed-history-weight``), read by the exclusion threshold and kept in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flower_mocks import arrays_of, server_identity, train_reply  # noqa: F401  (fixture)
from test_clipfed_batched import client_states

import clipfed.defense.clipfed as clipfed_module
from clipfed.config import RunConfig
from clipfed.defense import create_defense
from clipfed.defense.clipfed import ClipFedDefense
from clipfed.defense.scoring import flagged
from clipfed.runs.checkpoint import Checkpoint, snapshot
from clipfed.runs.report import AggregationReport


def clipfed(data_dir: Path, server_data, weight: float) -> tuple[ClipFedDefense, list[AggregationReport]]:  # type: ignore[no-untyped-def]
    cfg = RunConfig.from_flower({"defense": "clipfed", "num-clients": 7, "num-malicious": 2, "device": "cpu",
                                 "data-dir": str(data_dir), "clipfed-probe-size": 40, "clipfed-post": False,
                                 "clipfed-history-weight": weight})
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg, server_data=server_data, on_report=reports.append)
    assert isinstance(strategy, ClipFedDefense)
    return strategy, reports


def test_running_scores_average_a_clients_rounds_and_start_at_its_first(fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    strategy, _ = clipfed(fake_data_dir, server_data, 0.5)
    first = strategy.running_scores([1, 2], torch.tensor([0.0, 4.0]))
    assert first.tolist() == [0.0, 4.0], "first appearance: the combined score itself"
    second = strategy.running_scores([2, 3], torch.tensor([1.0, 1.0]))
    assert second.tolist() == [2.5, 1.0], "0.5 * 1.0 + 0.5 * 4.0 for the returning client"
    assert strategy.history == {1: 0.0, 2: 2.5, 3: 1.0}


def test_weight_one_is_this_round_alone(fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    strategy, _ = clipfed(fake_data_dir, server_data, 1.0)
    strategy.running_scores([1], torch.tensor([9.0]))
    combined = torch.tensor([0.5])
    assert strategy.running_scores([1], combined) is combined


@pytest.mark.usefixtures("server_identity")
def test_a_client_flagged_before_stays_flagged_on_a_quiet_round_only_with_history(
        fake_data_dir: Path, server_data, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Round 1: clients 1 and 5 score 3 and are excluded. Round 2: they score 0.5 and client 4
    scores 2 (one loud round). With weight 0.5, 1 and 5 stay excluded (running 1.75 > 1.5) and
    4's loud round is averaged with its calm one (1.0); with weight 1 the round is judged alone, as
    before this key existed. The combined scores are scripted: which of seven near-identical
    noisy clients the real signals put over the threshold is float noise (it differed on CI)."""
    scripted = {1: [0.0, 3.0, 0.2, 0.1, 0.0, 3.0, 0.1], 2: [0.1, 0.5, 0.2, 0.1, 2.0, 0.5, 0.0]}
    excluded = {}
    for weight in (0.5, 1.0):
        strategy, reports = clipfed(fake_data_dir, server_data, weight)
        for server_round in (1, 2):
            monkeypatch.setattr(clipfed_module, "combine",
                                lambda _, scores=scripted[server_round]: torch.tensor(scores))
            global_state, states, _ = client_states("cnn", clients=7, outliers=())
            replies = [train_reply(10 + i, i, {k: v.numpy() for k, v in s.items()}, 50) for i, s in enumerate(states)]
            strategy.global_arrays = arrays_of({k: v.numpy() for k, v in global_state.items()})
            strategy.aggregate_train(server_round, replies)
        first, second = reports
        assert set(first.excluded) == {1, 5}
        scores, before = second.details["scores"], first.details["scores"]
        if weight < 1:
            for pid in (1, 4, 5):
                now, then = scores["partition"].index(pid), before["partition"].index(pid)
                assert scores["running"][now] == pytest.approx(
                    0.5 * scores["combined"][now] + 0.5 * before["running"][then], abs=1e-3)
        else:
            assert "running" not in scores, "nothing new recorded when the key is off"
        excluded[weight] = set(second.excluded)
    assert excluded == {0.5: {1, 5}, 1.0: {4}}


def test_running_scores_survive_a_checkpoint_and_old_checkpoints_load(fake_data_dir: Path, server_data,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path) -> None:
    strategy, _ = clipfed(fake_data_dir, server_data, 0.5)
    strategy.running_scores([3, 8], torch.tensor([2.0, 0.25]))
    snapshot(4, arrays_of({"w": np.zeros(2, dtype=np.float32)}), strategy.state_dict(), strategy.cfg).save(tmp_path)
    restored, _ = clipfed(fake_data_dir, server_data, 0.5)
    restored.load_state_dict(Checkpoint.load(tmp_path).strategy_state)
    assert restored.history == {3: 2.0, 8: 0.25}
    restored.load_state_dict({"projector": strategy.state_dict()["projector"]})  # saved before the key existed
    assert restored.history == {}


def test_flagged_reads_the_low_side_only_when_given() -> None:
    running = torch.tensor([0.0, 0.2, 3.0, 0.1, 0.0, 0.3, 0.1])
    low = torch.tensor([0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 1.9])
    assert flagged(running, 1.5) == {2}, "one-sided: exactly the rule before the low side existed"
    assert flagged(running, 1.5, low, 2.0) == {2, 4}, "client 4 is far too quiet; 6 is under its threshold"
    assert flagged(torch.full((7,), 9.0), 1.5, torch.full((7,), 9.0), 2.0) == {0, 1, 2}, "never a majority"


@pytest.mark.usefixtures("server_identity")
def test_a_client_that_moved_far_less_than_honest_training_is_excluded_with_low_signals(
        fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    """Client 3 sends the global model back unchanged (as an update held at the global model
    would look): the lowest proto shift and the lowest KL change of the round. Only with
    ``clipfed-low-signals`` is that suspicious."""
    excluded, recorded = {}, {}
    for low_signals in ("", "proto"):
        cfg = RunConfig.from_flower({"defense": "clipfed", "num-clients": 7, "num-malicious": 2, "device": "cpu",
                                     "data-dir": str(fake_data_dir), "clipfed-probe-size": 40,
                                     "clipfed-post": False, "clipfed-low-signals": low_signals})
        reports: list[AggregationReport] = []
        strategy = create_defense(cfg, server_data=server_data, on_report=reports.append)
        global_state, states, _ = client_states("cnn", clients=7, outliers=())
        states[3] = {k: v.clone() for k, v in global_state.items()}
        replies = [train_reply(10 + i, i, {k: v.numpy() for k, v in s.items()}, 50) for i, s in enumerate(states)]
        strategy.global_arrays = arrays_of({k: v.numpy() for k, v in global_state.items()})
        strategy.aggregate_train(1, replies)
        excluded[low_signals] = set(reports[0].excluded)
        recorded[low_signals] = reports[0].details["scores"]
    assert 3 in excluded["proto"] and 3 not in excluded[""]
    assert "low" not in recorded[""] and max(recorded["proto"]["low"]) == recorded["proto"]["low"][3] > 2.0
