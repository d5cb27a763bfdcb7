"""The mechanisms of the adaptive training parts: Neurotoxin's per-step mask, constrain-and-scale's
distance term and scaling, and clipfed-aware's own probe, evasion term and norm cap.

Fast: the tiny fake CIFAR (90 images per client), a few SGD steps of the CNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flower_mocks import instruction, server_identity  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from test_every_attack import CLIENTS, attacker_update, tiny

import clipfed.app.client_app as client_app
from clipfed.app.client_app import train
from clipfed.attacks import create_attack
from clipfed.attacks.base import AttackContext, StepHooks
from clipfed.attacks.training.neurotoxin import NeurotoxinTraining
from clipfed.attacks.update.neurotoxin import neurotoxin_mask
from clipfed.config import RunConfig
from clipfed.data import load_federated, malicious_clients
from clipfed.models import create_model
from clipfed.models.state import buffer_names
from clipfed.training import LocalSchedule, to_tensor, train_local

pytestmark = pytest.mark.usefixtures("server_identity")


def norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in update.values())))


def flat(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.ravel() for v in params.values()])


class Attacker:
    """One attacker's ClientApp across rounds, with its node state (the attack memory) kept."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.pid = min(malicious_clients(cfg))
        self.context = Context(run_id=1, node_id=100 + self.pid, state=RecordDict(), run_config=cfg.to_flower(),
                               node_config={"partition-id": self.pid, "num-partitions": CLIENTS})

    def train(self, global_params: dict[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        """The parameters sent back for ``global_params`` (the cnn has no buffers)."""
        arrays = ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in global_params.items()})
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
        reply = train(instruction(100 + self.pid, content), self.context)
        assert reply.content["metrics"]["is-malicious"] == 1
        sent = reply.content["arrays"]
        return {k: sent[k].numpy() for k in sent}


def initial_params(cfg: RunConfig) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in create_model(cfg.model, cfg.num_classes).state_dict().items()}


# --- Neurotoxin -----------------------------------------------------------------------------------

def clean_shard(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The first attacker's clean shard: uint8 (N, H, W, C) images, int (N,) labels."""
    train_set, _, split = load_federated(cfg)
    shard = train_set.subset(split.clients[min(malicious_clients(cfg))])
    return shard.images, shard.labels


def full_batch_gradient(params: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
                        cfg: RunConfig) -> np.ndarray:
    """(d,) the cross-entropy's gradient over all ``images`` in one batch at ``params`` (the cnn,
    no BatchNorm), flattened in parameter order."""
    model = create_model(cfg.model, cfg.num_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    F.cross_entropy(model(to_tensor(images)), torch.from_numpy(labels.astype(np.int64))).backward()
    return np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])  # type: ignore[union-attr]


def masks_seen(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The mask the neurotoxin training part computes in each ``prepare`` from now on."""
    seen: list[np.ndarray] = []
    prepare = NeurotoxinTraining.prepare

    def recording(self: NeurotoxinTraining, model: torch.nn.Module, ctx: AttackContext) -> None:
        prepare(self, model, ctx)
        assert self.mask is not None
        seen.append(self.mask.copy())

    monkeypatch.setattr(NeurotoxinTraining, "prepare", recording)
    return seen


def test_the_neurotoxin_mask_drops_the_largest_clean_gradient_coordinates_of_the_received_model(
        fake_data_dir: Path) -> None:
    """Official ``grad_mask_cv``: keep the ``neurotoxin-keep`` share of smallest |gradient| of the
    received global model on clean data; no memory, so a first turn is masked and two turns with
    the same received model get the same mask whatever came before."""
    cfg = tiny(fake_data_dir, attack="neurotoxin", **{"batch-size": 128, "neurotoxin-keep": 0.7})
    images, labels = clean_shard(cfg)
    assert len(labels) <= cfg.batch_size  # one batch: the part's subset and order change nothing
    attack = create_attack(cfg)
    assert attack is not None and isinstance(attack.training, NeurotoxinTraining)
    part = attack.training
    g = initial_params(cfg)
    model = create_model(cfg.model, cfg.num_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in g.items()})
    torch.manual_seed(0)  # the subset's order (summation order; ties at the boundary)
    part.prepare(model, AttackContext(1, 0, g, clean_images=images, clean_labels=labels))
    assert part.mask is not None and part.mask.sum() == round(0.7 * part.mask.size)
    magnitude = np.abs(full_batch_gradient(g, images, labels, cfg))
    assert magnitude[~part.mask].min() >= magnitude[part.mask].max() - 1e-6, "not the largest |gradient| dropped"
    assert all(torch.equal(p, torch.from_numpy(g[k])) for k, p in model.state_dict().items()), "model changed"
    first = part.mask.copy()
    moved = create_model(cfg.model, cfg.num_classes)
    moved.load_state_dict({k: torch.from_numpy(v + 0.05) for k, v in g.items()})
    part.prepare(moved, AttackContext(2, 0, {k: v + 0.05 for k, v in g.items()}, clean_images=images,
                                      clean_labels=labels))
    assert not np.array_equal(part.mask, first), "the mask does not follow the received model"
    torch.manual_seed(0)
    part.prepare(model, AttackContext(3, 0, g, clean_images=images, clean_labels=labels))
    np.testing.assert_array_equal(part.mask, first)
    with pytest.raises(ValueError, match="clean shard"):
        part.prepare(model, AttackContext(1, 0, g))


def test_the_mask_draws_the_same_random_numbers_whether_or_not_the_process_is_fresh(fake_data_dir: Path) -> None:
    """The mask's subset comes from torch's global generator, which the ClientApp seeds; building
    the model that ``buffer_names`` caches must not draw from it, or a node's first call in a
    process (a fresh SuperNode, a resumed run) would mask other coordinates than later calls."""
    buffer_names.cache_clear()
    fresh = attacker_update(fake_data_dir, attack="neurotoxin")
    warm = attacker_update(fake_data_dir, attack="neurotoxin")
    assert all(np.array_equal(fresh[k], warm[k]) for k in fresh)


@pytest.mark.parametrize("project", [True, False])
def test_neurotoxin_masked_coordinates_never_move_from_its_first_turn(
        fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch, project: bool) -> None:
    """An attacker's first turn, nothing in memory: after every SGD step (momentum 0.9, weight
    decay 5e-4) the coordinates outside the mask hold the global values exactly. Without the
    after-step reset (``project=False``, the official code's behaviour) weight decay moves them:
    the reset is what holds them."""
    cfg = tiny(fake_data_dir, attack="neurotoxin", lr=0.1, **{"attack-local-steps": 6, "neurotoxin-keep": 0.5})
    assert cfg.momentum > 0 and cfg.weight_decay > 0
    attacker = Attacker(cfg)
    g1 = initial_params(cfg)
    masks = masks_seen(monkeypatch)
    worst: list[float] = []
    original = client_app.train_local

    def checking(model: torch.nn.Module, *args: Any, hooks: StepHooks | None = None, **kwargs: Any) -> float:
        assert hooks is not None and hooks.before_step is not None and hooks.after_step is not None
        inner = hooks.after_step if project else (lambda _m, _s: None)

        def after_step(m: torch.nn.Module, step: int) -> None:
            inner(m, step)
            now = np.concatenate([p.detach().cpu().numpy().ravel() for _, p in m.named_parameters()])
            worst.append(float(np.abs(now - flat(g1))[~masks[-1]].max()))

        return original(model, *args, hooks=StepHooks(before_step=hooks.before_step, after_step=after_step),
                        **kwargs)

    monkeypatch.setattr(client_app, "train_local", checking)
    sent = attacker.train(g1, server_round=1)
    (mask,) = masks
    frozen = ~mask
    update = flat(sent) - flat(g1)
    assert len(worst) == 6 and frozen.sum() == round(0.5 * frozen.size)
    if project:
        assert max(worst) == 0.0 and np.all(update[frozen] == 0.0)
        assert np.count_nonzero(update[~frozen]) > 0.5 * (~frozen).sum(), "the kept coordinates did not train"
    else:
        assert max(worst) > 0.0, "weight decay should move the masked coordinates without the reset"


def test_neurotoxin_training_and_update_parts_compose(fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each has its own mask: the training part's from this turn's gradient, the update part's
    from the last global step it saw (none in a first turn); the update is zero outside both."""
    cfg = tiny(fake_data_dir, attack="neurotoxin", **{"attack-update": "neurotoxin", "neurotoxin-keep": 0.5})
    attacker = Attacker(cfg)
    masks = masks_seen(monkeypatch)
    g1 = initial_params(cfg)
    g2 = attacker.train(g1, server_round=1)
    assert np.all((flat(g2) - flat(g1))[~masks[0]] == 0.0), "first turn: the training part's mask alone"
    update = flat(attacker.train(g2, server_round=2)) - flat(g2)
    kept = masks[1] & neurotoxin_mask(flat(g2) - flat(g1), 0.5)
    assert np.all(update[~kept] == 0.0) and np.count_nonzero(update) > 0
    assert set(attacker.context.state["attack-memory"]) == {"previous-global"}


# --- constrain-scale --------------------------------------------------------------------------------

def test_constrain_pulls_the_model_towards_the_global_one(fake_data_dir: Path) -> None:
    keys = {"lr": 0.05, "attack-local-steps": 10}
    plain = attacker_update(fake_data_dir, attack="badnets", **keys)
    constrained = attacker_update(fake_data_dir, attack="badnets", **{"attack-training": "constrain"}, **keys)
    assert norm(constrained) < 0.9 * norm(plain)
    # not only the smaller weight on the task: plain BadNets at 0.7 x lr has the same task step
    slower = attacker_update(fake_data_dir, attack="badnets", **{**keys, "lr": 0.7 * keys["lr"]})
    assert norm(constrained) < norm(slower)
    # alpha = 1 switches the term off (the official default)
    off = attacker_update(fake_data_dir, attack="badnets", **{"attack-training": "constrain", "constrain-alpha": 1.0},
                          **keys)
    for k in plain:
        np.testing.assert_allclose(off[k], plain[k], rtol=1e-5, atol=1e-7)


def test_constrain_scale_boosts_the_constrained_update(fake_data_dir: Path) -> None:
    constrained = attacker_update(fake_data_dir, attack="badnets", **{"attack-training": "constrain"})
    scaled = attacker_update(fake_data_dir, attack="constrain-scale", **{"boost-factor": 3.0})
    for k in constrained:
        np.testing.assert_allclose(scaled[k], 3.0 * constrained[k], rtol=1e-4, atol=1e-6)
    assert norm(constrained) > 0


# --- clipfed-aware ----------------------------------------------------------------------------------

def test_clipfed_aware_builds_its_probe_only_from_its_own_clean_shard(
        fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipfed.attacks.training.clipfed_aware as aware

    seen: dict[str, list[np.ndarray]] = {"probe": [], "copies": []}
    build, copies = aware.build_own_probe, aware.trigger_like_copies

    def spy_build(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, *args: Any) -> Any:
        seen["probe"] += [images, labels]
        return build(model, images, labels, *args)

    def spy_copies(images: np.ndarray, *args: Any) -> Any:
        seen["copies"].append(images)
        return copies(images, *args)

    monkeypatch.setattr(aware, "build_own_probe", spy_build)
    monkeypatch.setattr(aware, "trigger_like_copies", spy_copies)
    attacker_update(fake_data_dir, attack="clipfed-aware")

    cfg = tiny(fake_data_dir, attack="clipfed-aware")
    train_set, _, split = load_federated(cfg)
    shard = train_set.subset(split.clients[min(malicious_clients(cfg))])
    images, labels = seen["probe"]
    assert np.array_equal(images, shard.images) and np.array_equal(labels, shard.labels), "not its clean shard"
    (sources,) = seen["copies"]
    shard_rows = {row.tobytes() for row in shard.images}
    assert len(sources) > 0 and all(row.tobytes() in shard_rows for row in sources)


def aware_setup(data_dir: Path, **keys: Any) -> tuple[RunConfig, np.ndarray, np.ndarray, Any, dict[str, np.ndarray]]:
    """The attacker's config, clean shard, poisoned shard and the initial global parameters."""
    cfg = tiny(data_dir, attack="clipfed-aware", lr=0.05, **{"attack-local-steps": 20, **keys})
    train_set, _, split = load_federated(cfg)
    shard = train_set.subset(split.clients[min(malicious_clients(cfg))])
    attack = create_attack(cfg)
    assert attack is not None
    poisoned = attack.data.poison(shard.images, shard.labels, np.random.default_rng(0))
    return cfg, shard.images, shard.labels, poisoned, initial_params(cfg)


def test_clipfed_aware_stays_closer_to_the_global_model_on_its_probe_than_badnets(fake_data_dir: Path) -> None:
    cfg, images, labels, poisoned, g = aware_setup(fake_data_dir)
    attack = create_attack(cfg)
    assert attack is not None
    part = attack.training
    schedule = part.schedule(LocalSchedule.benign(cfg), len(labels))

    def trained(hooked: bool) -> torch.nn.Module:
        model = create_model(cfg.model, cfg.num_classes)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in g.items()})
        hooks = None
        if hooked:
            ctx = AttackContext(1, 0, g, clean_images=images, clean_labels=labels)
            part.prepare(model, ctx)
            hooks = part.hooks(model, ctx)
        train_local(model, poisoned.images, poisoned.labels, epochs=schedule.epochs, batch_size=cfg.batch_size,
                    lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay,
                    generator=torch.Generator().manual_seed(1), max_steps=schedule.max_steps, hooks=hooks)
        return model

    aware_model, plain_model = trained(True), trained(False)
    probe = part.probe
    x = torch.cat([probe.clean_x, probe.copies_x])
    target = torch.cat([probe.clean_log_probs, probe.copies_log_probs])

    @torch.no_grad()
    def divergence(model: torch.nn.Module) -> tuple[float, float]:
        model.eval()
        kl = F.kl_div(F.log_softmax(model(x), 1), target, reduction="batchmean", log_target=True)
        features = model.features(probe.copies_x)
        means = torch.stack([features[probe.copies_y == c].mean(0) for c in probe.copies_y.unique()])
        shift = 1 - F.cosine_similarity(means, probe.prototypes[probe.copies_y.unique()], dim=1)
        return float(kl), float(shift.max())

    (aware_kl, aware_shift), (plain_kl, plain_shift) = divergence(aware_model), divergence(plain_model)
    assert aware_kl < 0.5 * plain_kl and aware_shift < plain_shift


def test_clipfed_aware_caps_its_update_norm_at_an_honest_updates(fake_data_dir: Path) -> None:
    """With a 4x attack lr the raw update is far larger than an honest one; the sent one is
    scaled onto the honest update's norm, which the part measured by training a copy honestly."""
    cfg, images, labels, _, g = aware_setup(fake_data_dir, **{"attack-lr": 0.2})
    sent = Attacker(cfg).train(g, server_round=1)
    attack = create_attack(cfg)
    assert attack is not None
    part = attack.training
    model = create_model(cfg.model, cfg.num_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in g.items()})
    part.prepare(model, AttackContext(1, 0, g, clean_images=images, clean_labels=labels))
    honest = part.benign_norm
    uncapped = attacker_update(fake_data_dir, attack="badnets", lr=0.05,
                               **{"attack-local-steps": 20, "attack-lr": 0.2})
    assert norm(uncapped) > 2 * honest > 0
    assert norm({k: sent[k] - g[k] for k in g}) == pytest.approx(honest, rel=1e-4)
