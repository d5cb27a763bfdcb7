"""Every attack shorthand and every attack part runs through the ClientApp and a strategy round,
and the parts compose: any data part with any training and update part.

The parametrisation comes from the registries, so a new attack or part is tested by being
registered. The composition tests pin what "independent parts" means: a shorthand is exactly
its triple, an update part applied to another trigger does to it what it does to BadNets, and a
training part's per-step hook acts on every step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flower_mocks import instruction, server_identity  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clipfed.app.client_app import train
from clipfed.attacks import create_attack, list_attacks
from clipfed.attacks.registry import PARTS, SHORTHANDS, resolve_parts
from clipfed.config import RunConfig
from clipfed.data import load_federated, malicious_clients
from clipfed.defense import create_defense
from clipfed.defense.sampler import PartitionSampler
from clipfed.engines.inprocess import InProcessGrid
from clipfed.evaluation import BackdoorEvaluator
from clipfed.models import create_model
from clipfed.runs.report import AggregationReport

pytestmark = pytest.mark.usefixtures("server_identity")
CLIENTS = 4
DEFAULT_PARTS = {"attack-data": "badnets", "attack-training": "sgd", "attack-update": "none"}


def tiny(data_dir: Path, **overrides: Any) -> RunConfig:
    return RunConfig.from_flower({
        "num-clients": CLIENTS, "num-malicious": 2, "data-dir": str(data_dir), "public-pool-fraction": 0.1,
        "partition": "iid", "local-steps": 3, "batch-size": 8, "flip-source": 3, "round-timeout": 5.0,
        "a3fl-outer-epochs": 2, "a3fl-adv-epochs": 1,  # A3FL's official 200 x 5 passes take minutes here
        **overrides,
    })


def every_attack() -> list[dict[str, str]]:
    """Each shorthand, and each part of each registry with the default other two."""
    cases = [{"attack": name} for name in list_attacks()]
    for key, registry in PARTS.items():
        cases += [{"attack": "badnets", key: name} for name in registry.names() if name != DEFAULT_PARTS[key]]
    return cases


@pytest.mark.parametrize("attack", every_attack(), ids=lambda c: "+".join(c.values()))
def test_every_attack_and_part_runs_a_round_through_the_clientapp_and_a_strategy(
        attack: dict[str, str], fake_data_dir: Path) -> None:
    cfg = tiny(fake_data_dir, **attack)
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg, sampler=PartitionSampler(cfg, poll_seconds=0.0), on_report=reports.append)
    torch.manual_seed(0)
    initial = ArrayRecord(create_model(cfg.model, cfg.num_classes).state_dict())
    result = strategy.start(grid=InProcessGrid(cfg), initial_arrays=initial, num_rounds=1,
                            timeout=cfg.round_timeout, train_config=ConfigRecord())

    (report,) = reports
    assert report.rejected == [] and report.missing == []
    assert report.participants == list(range(CLIENTS))
    assert report.malicious == sorted(malicious_clients(cfg)), "the attackers did not act"
    assert all(np.isfinite(a.numpy()).all() for a in result.arrays.values())
    built = create_attack(cfg)
    assert built is not None and built.part_names == resolve_parts(
        cfg.attack, cfg.attack_data, cfg.attack_training, cfg.attack_update)
    _, test, _ = load_federated(cfg)
    model = create_model(cfg.model, cfg.num_classes)
    model.load_state_dict(result.arrays.to_torch_state_dict())
    scores = BackdoorEvaluator(test, built)(model)
    assert scores.asr is not None and 0.0 <= scores.asr <= 1.0, "ASR cannot be measured with this trigger"


def test_every_shorthand_names_registered_parts() -> None:
    for name, short in SHORTHANDS.items():
        for key, part in zip(PARTS, short[:3], strict=True):
            assert part in PARTS[key].names(), (name, key, part)


def attacker_update(data_dir: Path, **overrides: Any) -> dict[str, np.ndarray]:
    """The update (trained minus global parameters) one attacker's ClientApp sends in round 1."""
    cfg = tiny(data_dir, **overrides)
    attacker = min(malicious_clients(cfg))
    torch.manual_seed(0)
    arrays = ArrayRecord(create_model(cfg.model, cfg.num_classes).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    context = Context(run_id=1, node_id=100 + attacker, state=RecordDict(), run_config=cfg.to_flower(),
                      node_config={"partition-id": attacker, "num-partitions": CLIENTS})
    reply = train(instruction(100 + attacker, content), context)
    assert reply.content["metrics"]["is-malicious"] == 1
    sent = reply.content["arrays"]
    return {k: sent[k].numpy() - arrays[k].numpy() for k in sent if "num_batches" not in k}


def test_a_shorthand_is_exactly_its_parts(fake_data_dir: Path) -> None:
    short = attacker_update(fake_data_dir, attack="scaling")
    composed = attacker_update(fake_data_dir, attack="badnets", **{"attack-update": "scaling"})
    assert all(np.array_equal(short[k], composed[k]) for k in short)


def test_model_replacement_composes_with_a_blended_trigger(fake_data_dir: Path) -> None:
    """attack='blended' attack-update='scaling' boosts exactly the update blended alone sends."""
    plain = attacker_update(fake_data_dir, attack="blended")
    boosted = attacker_update(fake_data_dir, attack="blended", **{"attack-update": "scaling", "boost-factor": 3.0})
    weights = [k for k in plain if "running" not in k]
    for key in weights:
        np.testing.assert_allclose(boosted[key], 3.0 * plain[key], rtol=1e-4, atol=1e-6)
    assert any(np.abs(plain[k]).sum() > 0 for k in weights)


@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_pgd_keeps_the_update_within_pgd_eps(fake_data_dir: Path, eps: float) -> None:
    free = attacker_update(fake_data_dir, attack="badnets", lr=0.1)
    bounded = attacker_update(fake_data_dir, attack="pgd", lr=0.1, **{"pgd-eps": eps, "pgd-every": 2})
    norm = lambda update: float(np.sqrt(sum((v**2).sum() for k, v in update.items() if "running" not in k)))  # noqa: E731
    assert norm(free) > eps, "the test needs an unconstrained update larger than the ball"
    assert norm(bounded) <= eps * (1 + 1e-5)


def test_pgd_projects_every_pgd_every_steps_and_after_the_last(fake_data_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import clipfed.attacks.training.pgd as pgd

    calls: list[float] = []
    original = pgd.project_l2

    def counting(params: Any, centre: Any, eps: float) -> float:
        calls.append(eps)
        return original(params, centre, eps)

    monkeypatch.setattr(pgd, "project_l2", counting)
    attacker_update(fake_data_dir, attack="pgd", **{"attack-local-steps": 7, "pgd-every": 3})
    assert len(calls) == 2 + 1  # after steps 3 and 6, and once after training


def test_train_local_runs_every_hook_of_a_training_part() -> None:
    """The per-step surface a training part builds on: the extra loss term enters every step's
    gradient, ``after_step`` sees steps 1..n, ``after_training`` runs once; no hooks is plain SGD."""
    from clipfed.training import StepHooks, train_local

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40)

    def run(hooks: StepHooks | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = create_model("cnn", 10)
        train_local(model, images, labels, epochs=2, batch_size=16, lr=0.05, momentum=0.0, weight_decay=0.0,
                    generator=torch.Generator().manual_seed(1), max_steps=5, hooks=hooks)
        return model.state_dict()

    steps: list[int] = []
    masked: list[int] = []
    ended: list[int] = []
    losses: list[float] = []

    def extra(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        term = 0.1 * logits.pow(2).mean()
        losses.append(float(term))
        return term

    def freeze_first_layer(model: torch.nn.Module, step: int) -> None:
        masked.append(step)
        next(model.parameters()).grad.zero_()  # a gradient mask: this tensor never moves

    torch.manual_seed(0)
    first = next(create_model("cnn", 10).parameters()).detach().clone()
    hooked = run(StepHooks(extra_loss=extra, before_step=freeze_first_layer,
                           after_step=lambda _, step: steps.append(step), after_training=lambda _: ended.append(1)))
    assert steps == masked == [1, 2, 3, 4, 5] and ended == [1] and len(losses) == 5
    assert torch.equal(hooked[next(iter(hooked))], first), "the gradient mask did not hold the masked tensor"
    plain, again = run(None), run(StepHooks())
    assert all(torch.equal(plain[k], again[k]) for k in plain), "empty hooks changed plain SGD"
    assert any(not torch.equal(plain[k], hooked[k]) for k in plain), "the extra loss term changed nothing"


@pytest.mark.parametrize(("keys", "expected"), [
    ({}, (1, 10, 0.01)),  # as benign
    ({"attack-local-steps": 50}, (5, 50, 0.01)),  # 12 batches of 8 an epoch: the epochs grow to fit
    ({"attack-epochs": 6}, (6, 0, 0.01)),  # whole epochs: the benign local-steps cap does not bind
    ({"attack-epochs": 6, "attack-local-steps": 20, "attack-lr": 0.05}, (6, 20, 0.05)),
])
def test_the_attackers_own_schedule(keys: dict[str, Any], expected: tuple[int, int, float]) -> None:
    from clipfed.training import LocalSchedule

    cfg = RunConfig.from_flower({"local-steps": 10, "batch-size": 8, "lr": 0.01, **keys})
    attack = create_attack(cfg)
    assert attack is not None
    schedule = attack.training.schedule(LocalSchedule.benign(cfg), num_samples=90)
    assert (schedule.epochs, schedule.max_steps, schedule.lr) == expected
    assert (schedule.momentum, schedule.weight_decay) == (cfg.momentum, cfg.weight_decay)


def test_no_attack_or_part_loads_server_side_code_into_a_clientapp() -> None:
    """Every shorthand built and every part's module imported in a fresh ClientApp process loads no
    synthesis, teacher, guard or defense module, nor open_clip or scikit-learn (the frequency
    trigger once pulled in the synthesis pipeline, and clipfed-aware imitates CLIP-Fed's recipe
    through clipfed.trigger_like, never through the server's data)."""
    import subprocess
    import sys

    code = ("import sys, clipfed.app.client_app\n"
            "from clipfed.attacks import create_attack, list_attacks\n"
            "from clipfed.attacks.registry import PARTS\nfrom clipfed.config import RunConfig\n"
            "for name in list_attacks(): create_attack(RunConfig.from_flower({'attack': name}))\n"
            "for registry in PARTS.values(): [registry.get(part) for part in registry.names()]\n"
            "print(sorted(m for m in sys.modules if m.startswith(('clipfed.data_synth', 'clipfed.defense', "
            "'clipfed.teacher', 'clipfed.guard', 'open_clip', 'sklearn'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout
