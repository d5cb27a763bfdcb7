"""Triggers the attackers learn against the global model: A3FL and F3BA, and how the server measures
ASR with them (its own re-derivation, as the attackers learn theirs).

Small budgets throughout (a3fl-outer-epochs 2-6, one unlearning epoch): the official 200 passes
with a copy unlearned 5 epochs in each take minutes on these cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import class_images
from flower_mocks import instruction, server_identity  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

import clipfed.attacks.data.a3fl as a3fl
from clipfed.app.client_app import MEMORY, train
from clipfed.attacks import create_attack
from clipfed.attacks.base import AttackContext
from clipfed.attacks.data.f3ba import (
    FLIPS_KEY,
    aligned_signs,
    candidate_mask,
    first_conv,
    gradient_importance,
    movement_importance,
)
from clipfed.attacks.registry import DATA_PARTS
from clipfed.checks import LEARNED_TRIGGERS, load_run_config
from clipfed.config import ConfigError, RunConfig
from clipfed.data import load_federated, malicious_clients
from clipfed.evaluation import BackdoorEvaluator, trigger_pool
from clipfed.models import create_model
from clipfed.training import to_tensor, train_local

pytestmark = pytest.mark.usefixtures("server_identity")
CLIENTS = 4
TINY_A3FL = {"a3fl-outer-epochs": 2, "a3fl-adv-epochs": 1}


def tiny(data_dir: Path, **overrides: Any) -> RunConfig:
    return RunConfig.from_flower({
        "num-clients": CLIENTS, "num-malicious": 1, "data-dir": str(data_dir), "public-pool-fraction": 0.1,
        "partition": "iid", "local-steps": 3, "batch-size": 8, "target-label": 0, **overrides,
    })


def shard(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 32, 32, 3) learnable class images and their labels."""
    labels = np.arange(n) % 10
    return class_images(labels, np.random.default_rng(seed)), labels


def global_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", 10)


def context_for(model: torch.nn.Module, server_round: int = 1,
                memory: dict[str, np.ndarray] | None = None) -> AttackContext:
    params = {k: p.detach().numpy().copy() for k, p in model.named_parameters()}
    return AttackContext(server_round, 0, params, memory={} if memory is None else memory)


def target_probability(model: torch.nn.Module, images: np.ndarray, target: int) -> float:
    """Mean softmax probability of ``target`` over the uint8 (N, H, W, C) ``images``."""
    with torch.no_grad():
        return float(model.eval()(to_tensor(images)).softmax(1)[:, target].mean())


def client_round(cfg: RunConfig, context: Context, server_round: int, arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The parameters the attacker's ClientApp sends for ``arrays`` in ``server_round``."""
    pid = int(context.node_config["partition-id"])
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    reply = train(instruction(100 + pid, content), context)
    assert reply.content["metrics"]["is-malicious"] == 1
    sent = reply.content["arrays"]
    return {k: sent[k].numpy() for k in sent}


def attacker_context(cfg: RunConfig) -> Context:
    pid = min(malicious_clients(cfg))
    return Context(run_id=1, node_id=100 + pid, state=RecordDict(), run_config=cfg.to_flower(),
                   node_config={"partition-id": pid, "num-partitions": CLIENTS})


def memory_of(context: Context) -> dict[str, np.ndarray]:
    record = context.state[MEMORY]
    assert isinstance(record, ArrayRecord)
    return {k: v.numpy() for k, v in record.items()}


# A3FL ------------------------------------------------------------------------------------------


def test_the_a3fl_trigger_raises_the_global_models_target_probability_over_its_starting_patch() -> None:
    """36 signed steps of 0.1 (normalised units; the official 0.01 moves a 5x5 patch too little in
    so few steps to show on a CNN) against a briefly trained global model."""
    cfg = RunConfig.from_flower({"attack": "a3fl", "batch-size": 16, "target-label": 3, "a3fl-outer-epochs": 12,
                                 "a3fl-adv-epochs": 1, "a3fl-adv-every": 6, "a3fl-trigger-lr": 0.1})
    attack = create_attack(cfg)
    assert attack is not None
    images, labels = shard()
    model = global_model()
    train_local(model, images, labels, epochs=5, batch_size=16, lr=0.05, momentum=0.9, weight_decay=0.0,
                generator=torch.Generator().manual_seed(0))
    before = target_probability(model, attack.apply_trigger(images), 3)
    torch.manual_seed(1)
    attack.data.prepare(model, images, labels, context_for(model))
    after = target_probability(model, attack.apply_trigger(images), 3)
    assert after > 1.05 * before, (before, after)


def test_the_adversarial_copy_is_unlearned_and_steers_the_trigger_when_the_adaptive_term_is_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    copies: list[torch.nn.Module] = []
    original = a3fl.unlearned_copy

    def spy(*args: Any, **kwargs: Any) -> torch.nn.Module:
        copies.append(original(*args, **kwargs))
        return copies[-1]

    monkeypatch.setattr(a3fl, "unlearned_copy", spy)
    images, labels = shard()

    def learned(weight: float) -> np.ndarray:
        cfg = RunConfig.from_flower({"attack": "a3fl", "batch-size": 16, "a3fl-outer-epochs": 4,
                                     "a3fl-adv-epochs": 1, "a3fl-adv-weight": weight})
        attack = create_attack(cfg)
        assert attack is not None
        model = global_model()
        torch.manual_seed(1)
        attack.data.prepare(model, images, labels, context_for(model))
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), global_model().parameters(), strict=True)), \
            "prepare changed the received model"
        return attack.data.pattern  # type: ignore[attr-defined, no-any-return]

    on = learned(1.0)
    assert len(copies) == 3, "a fresh unlearned copy for every pass after the first (a3fl-adv-every 1)"
    reference = global_model().requires_grad_(False)
    for copy in copies:
        moved = max(float((p - q).abs().max()) for p, q in zip(copy.parameters(), reference.parameters(), strict=True))
        assert moved > 1e-4, "the adversarial copy was not trained"
    negligible = learned(1e-12)  # the same copies and batch order, the term itself ~ 0
    assert len(copies) == 6
    assert not np.array_equal(on, negligible), "the adaptive term did not change the trigger"
    learned(0.0)
    assert len(copies) == 6, "a3fl-adv-weight 0 (adaptive term off) still unlearned copies"


def test_the_learned_a3fl_trigger_persists_in_the_nodes_memory_across_its_rounds(
        fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[np.ndarray] = []
    search = a3fl.A3FL.search

    def recording(self: a3fl.A3FL, *args: Any) -> torch.Tensor:
        starts.append(self.pattern.copy())
        return search(self, *args)

    monkeypatch.setattr(a3fl.A3FL, "search", recording)
    cfg = tiny(fake_data_dir, attack="a3fl", **TINY_A3FL)
    context = attacker_context(cfg)
    arrays = ArrayRecord(global_model().state_dict())
    client_round(cfg, context, 1, arrays)
    first = memory_of(context)["a3fl-trigger"]
    assert first.shape == (5, 5, 3) and not np.array_equal(first, starts[0]), "round 1 learned nothing"
    client_round(cfg, context, 2, arrays)
    np.testing.assert_array_equal(starts[1], first)  # round 2 starts from round 1's trigger
    assert not np.array_equal(memory_of(context)["a3fl-trigger"], first)


# F3BA ------------------------------------------------------------------------------------------


def test_f3ba_candidates_are_the_share_of_lowest_importance() -> None:
    previous = np.array([1.0, 1.0, -1.0, 0.5, 0.2, -0.3])
    current = np.array([0.5, 1.5, -0.5, 0.5, -0.1, -0.6])
    # (current - previous) * current: -0.25, 0.75, -0.25, 0, 0.03, 0.18
    movement = movement_importance(current, previous)
    np.testing.assert_array_equal(candidate_mask(movement, 0.5), [True, False, True, True, False, False])
    # the same score from a gradient: the step is -lr * gradient
    np.testing.assert_allclose(gradient_importance(current, (previous - current) / 0.1), movement / 0.1)


def test_f3ba_ranks_a_first_turn_by_the_clean_gradient_at_the_received_model() -> None:
    """No previous global model in memory: importance ``-dL/dw * w`` of the first layer, the
    gradient of the cross-entropy on the (clean) images given to ``prepare``."""
    cfg = RunConfig.from_flower({"attack": "f3ba", "batch-size": 64, "f3ba-share": 0.1})
    attack = create_attack(cfg)
    assert attack is not None
    images, labels = shard(48)  # one batch: the gradient's subset and order change nothing
    model = global_model()
    memory: dict[str, np.ndarray] = {}
    attack.data.prepare(model, images, labels, context_for(model, 1, memory))
    chosen = memory[FLIPS_KEY] != 0
    assert chosen.sum() == round(0.1 * chosen.size)

    probe = global_model()
    torch.nn.functional.cross_entropy(probe(to_tensor(images)), torch.from_numpy(labels)).backward()
    weight = first_conv(probe).weight
    score = gradient_importance(weight.detach().numpy().ravel(), weight.grad.numpy().ravel())  # type: ignore[union-attr]
    assert score[chosen].max() <= score[~chosen].min() + 1e-7, "not the lowest -g * w"


def test_f3ba_flips_exactly_the_chosen_share_of_the_first_layer_in_every_turn(fake_data_dir: Path) -> None:
    """The first turn included (gradient importance), then the movement since it."""
    cfg = tiny(fake_data_dir, attack="f3ba", **{"attack-lr": 1e-9})  # training itself flips no sign
    context = attacker_context(cfg)
    key = next(k for k, v in global_model().state_dict().items() if v.dim() == 4)  # the first conv's weight
    arrays = ArrayRecord(global_model().state_dict())
    for server_round in (1, 2):
        sent = client_round(cfg, context, server_round, arrays)
        plan = memory_of(context)[FLIPS_KEY]
        chosen = plan != 0
        assert chosen.sum() == round(cfg.f3ba_share * plan.size) == 17  # 2% of the 864 weights of a 3x3x3x32 layer
        before, after = np.sign(arrays[key].numpy().ravel()), np.sign(sent[key].ravel())
        flipped = before != after
        np.testing.assert_array_equal(flipped, chosen & (before != plan))  # the chosen ones the plan turns, only
        np.testing.assert_array_equal(after[chosen], plan[chosen])
        assert flipped.any(), f"turn {server_round} flipped nothing"
        arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in sent.items()})  # the next global model


def test_the_f3ba_trigger_is_co_optimised_to_activate_the_flipped_filters() -> None:
    cfg = RunConfig.from_flower({"attack": "f3ba", "batch-size": 8, "patch-pattern": "random"})
    attack = create_attack(cfg)
    assert attack is not None
    images, labels = shard(80)
    model = global_model()
    memory: dict[str, np.ndarray] = {}
    attack.data.prepare(model, images, labels, context_for(model, 1, memory))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    conv = first_conv(model)
    x = to_tensor(images)

    def activation_gap(pattern: np.ndarray) -> float:
        attack.data.pattern = pattern  # type: ignore[attr-defined]
        plan = torch.from_numpy(memory[FLIPS_KEY]).view_as(conv.weight)
        region = attack.data.region(attack.data.to_normalised(32, 32, x.device))  # type: ignore[attr-defined]
        kernels = torch.where(plan != 0, aligned_signs(conv.weight, region) * conv.weight.abs(), conv.weight)
        triggered = to_tensor(attack.apply_trigger(images))
        with torch.no_grad():
            act = [torch.relu(torch.nn.functional.conv2d(v, kernels, conv.bias, 1, 1)).mean(dim=(0, 1))
                   for v in (triggered, x)]
        return float((act[0] - act[1]).pow(2).sum())

    start = attack.data.pattern.copy()  # type: ignore[attr-defined]
    torch.manual_seed(1)
    attack.data.prepare(model, images, labels, context_for(model, 2, memory))
    learned = memory["f3ba-trigger"]
    assert not np.array_equal(learned, start)
    assert (memory[FLIPS_KEY] != 0).sum() == 17
    assert activation_gap(learned) > activation_gap(start)


# ASR with the server's re-derivation -----------------------------------------------------------


def test_the_learned_trigger_parts_are_the_ones_the_config_checks_know() -> None:
    learned = [name for name in DATA_PARTS.names()
               if DATA_PARTS.get(name)(RunConfig()).learns_trigger]
    assert sorted(learned) == sorted(LEARNED_TRIGGERS)
    with pytest.raises(ConfigError, match="public-pool-fraction > 0"):
        load_run_config({"attack": "f3ba", "public-pool-fraction": 0.0})


def test_the_server_rederives_a_learned_trigger_with_its_own_memory_and_measures_asr_with_it(
        fake_data_dir: Path) -> None:
    cfg = tiny(fake_data_dir, attack="a3fl", **TINY_A3FL)
    train_set, test, split = load_federated(cfg)
    pool = trigger_pool(train_set, split, cfg.seed)
    assert len(pool) == min(round(sum(len(c) for c in split.clients) / CLIENTS), len(split.public_pool)) == 40
    evaluator = BackdoorEvaluator(test, create_attack(cfg), trigger_pool=pool, seed=cfg.seed)
    start = evaluator.triggered_x.clone()  # type: ignore[union-attr]
    model = global_model()
    evaluator.rederive_trigger(model, 1)
    first = evaluator.trigger_memory["a3fl-trigger"].copy()
    assert not torch.equal(evaluator.triggered_x, start)  # type: ignore[arg-type]
    evaluator.rederive_trigger(model, 2)
    assert not np.array_equal(evaluator.trigger_memory["a3fl-trigger"], first)  # continued from round 1's
    assert evaluator(model).asr is not None

    fixed = BackdoorEvaluator(test, create_attack(tiny(fake_data_dir, attack="badnets")))
    before = fixed.triggered_x.clone()  # type: ignore[union-attr]
    fixed.rederive_trigger(model, 1)  # a fixed trigger: nothing to re-derive, no pool needed
    assert torch.equal(fixed.triggered_x, before) and not fixed.rederives  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="public-pool images"):
        BackdoorEvaluator(test, create_attack(cfg)).rederive_trigger(model, 1)


def test_the_serverapp_rederives_each_attacked_round_against_the_model_its_attackers_received(
        fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipfed.app.server_app import initial_model
    from clipfed.engines.inprocess import run_inprocess
    from clipfed.runs.results import load_result

    calls: list[tuple[int, dict[str, torch.Tensor]]] = []
    rederive = BackdoorEvaluator.rederive_trigger

    def recording(self: BackdoorEvaluator, model: torch.nn.Module, server_round: int) -> None:
        calls.append((server_round, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        rederive(self, model, server_round)

    monkeypatch.setattr(BackdoorEvaluator, "rederive_trigger", recording)
    cfg = RunConfig.from_flower({"num-clients": 3, "num-malicious": 1, "num-server-rounds": 3, "partition": "iid",
                                 "batch-size": 16, "local-steps": 2, "data-dir": str(fake_data_dir),
                                 "out-dir": str(tmp_path), "run-name": "r", "attack": "f3ba",
                                 "attack-end-round": 2})
    result = load_result(run_inprocess(cfg))
    assert result["status"] == "completed"
    assert [r for r, _ in calls] == [1, 2], "re-derived outside the attack window [1, 2]"
    initial = initial_model(cfg).state_dict()
    assert all(torch.equal(calls[0][1][k], initial[k]) for k in initial), "round 1 is not the model sent in round 1"
    assert not all(torch.equal(calls[1][1][k], initial[k]) for k in initial)
    assert all(r["asr"] is not None for r in result["rounds"])


def test_the_serverapp_reports_the_rederivation_time_in_each_attacked_round(
        fake_data_dir: Path, tmp_path: Path) -> None:
    from clipfed.engines.inprocess import run_inprocess
    from clipfed.runs.results import load_result

    cfg = RunConfig.from_flower({"num-clients": 3, "num-malicious": 1, "num-server-rounds": 3, "partition": "iid",
                                 "batch-size": 16, "local-steps": 2, "data-dir": str(fake_data_dir),
                                 "out-dir": str(tmp_path), "run-name": "r", "attack": "f3ba",
                                 "attack-start-round": 2})
    rounds = load_result(run_inprocess(cfg))["rounds"]
    assert [r["trigger_seconds"] > 0 for r in rounds] == [False, False, True, True]
    assert all(r["trigger_seconds"] == 0.0 or r["trigger_seconds"] < r["round_seconds"] for r in rounds)


def test_a_run_resumed_after_the_attack_window_measures_asr_with_the_uninterrupted_runs_trigger(
        fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint after round 3 holds the trigger re-derived in rounds 1-2; round 4, resumed,
    stamps the test images with it, as the run that was never interrupted does."""
    from test_checkpoint import Interrupted, crash_at

    from clipfed.engines.inprocess import run_inprocess
    from clipfed.runs.checkpoint import Checkpoint
    from clipfed.runs.results import load_result

    stamped: list[torch.Tensor] = []  # the triggered test images of every evaluation, in order
    evaluate = BackdoorEvaluator.__call__

    def recording(self: BackdoorEvaluator, model: torch.nn.Module) -> Any:
        assert self.triggered_x is not None
        stamped.append(self.triggered_x.clone())
        return evaluate(self, model)

    monkeypatch.setattr(BackdoorEvaluator, "__call__", recording)

    def config(name: str, **keys: Any) -> RunConfig:
        return RunConfig.from_flower({
            "num-clients": 3, "num-malicious": 1, "num-server-rounds": 4, "partition": "iid", "batch-size": 16,
            "local-steps": 2, "data-dir": str(fake_data_dir), "out-dir": str(tmp_path), "run-name": name,
            "attack": "f3ba", "attack-end-round": 2, "patch-pattern": "random", **keys})

    whole = load_result(run_inprocess(config("whole")))
    whole_trigger = stamped[-1]
    assert not torch.equal(whole_trigger, stamped[0]), "the trigger was never re-derived"
    with monkeypatch.context() as patch:
        crash_at(patch, 4)
        with pytest.raises(Interrupted):
            run_inprocess(config("broken"))
    assert set(Checkpoint.load(tmp_path / "broken").trigger_memory) == {"f3ba-trigger", "f3ba-previous-layer",
                                                                          "f3ba-flips"}
    stamped.clear()
    resumed = load_result(run_inprocess(config("resumed", **{"resume-from": str(tmp_path / "broken")})))
    (resumed_trigger,) = stamped  # round 4 only
    assert torch.equal(resumed_trigger, whole_trigger), "round 4 measured with another trigger"
    assert [(r["round"], r["ma"], r["asr"], r["racc"]) for r in resumed["rounds"]] == \
        [(r["round"], r["ma"], r["asr"], r["racc"]) for r in whole["rounds"]]
