"""CLIP-Fed: scoring flags backdoored updates, post-alignment removes a backdoor, mock replies."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SHARED_ASSETS
from flower_mocks import arrays_of, server_identity, train_reply  # noqa: F401

import clipfed.defense.clipfed as clipfed_defense
from clipfed.attacks import create_attack
from clipfed.config import RunConfig
from clipfed.data import load_cifar10, public_pool_indices
from clipfed.data_synth import SynthConfig, build_server_dataset
from clipfed.data_synth.config import FilterConfig
from clipfed.defense import create_defense
from clipfed.defense.clipfed import kd_targets
from clipfed.devices import torch_threads
from clipfed.evaluation import BackdoorEvaluator
from clipfed.models import create_model
from clipfed.runs.report import AggregationReport
from clipfed.teacher import TeacherSpec
from clipfed.training import train_local

pytestmark = pytest.mark.usefixtures("server_identity")


def run_cfg(data_dir: Path, **overrides: object) -> RunConfig:
    return RunConfig.from_flower({"defense": "clipfed", "num-clients": 8, "num-malicious": 2,
                                  "data-dir": str(data_dir), "public-pool-fraction": 0.5,
                                  "poison-rate": 0.6, "patch-size": 6, **overrides})


def train_copy(initial: dict, images: np.ndarray, labels: np.ndarray, seed: int, epochs: int = 3,
               lr: float = 0.02) -> dict:
    model = create_model("cnn", 10)
    model.load_state_dict(initial)
    train_local(model, images, labels, epochs=epochs, batch_size=16, lr=lr, momentum=0.9,
                weight_decay=0.0, generator=torch.Generator().manual_seed(seed))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def state_of(arrays) -> dict:  # type: ignore[no-untyped-def]
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in arrays.items()}


@pytest.fixture(scope="module")
def real_setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Real CIFAR-10: a server dataset from the seed-0 public pool and a briefly pre-trained model.

    From its first use on, the module's tests compute with 2 torch threads (for speed: the
    scoring test below holds at 1 thread too)."""
    if not (SHARED_ASSETS / "cifar10").exists():
        pytest.skip("needs the offline CIFAR-10 in shared/assets")
    with torch_threads(2):
        yield _real_setup(tmp_path_factory)


def _real_setup(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cfg = SynthConfig(data_dir=str(SHARED_ASSETS), teacher=TeacherSpec(backend="reference", reference_epochs=5),
                      filter=FilterConfig(threshold=0.1), threads=2)
    data = build_server_dataset(cfg, tmp_path_factory.mktemp("synth-real")).dataset
    train, _ = load_cifar10(str(SHARED_ASSETS))
    pool = public_pool_indices(train.labels, 0, 0.1)
    torch.manual_seed(0)
    initial = train_copy(create_model("cnn", 10).state_dict(), np.asarray(train.images[pool]),
                         train.labels[pool], seed=0, epochs=2)
    return data, train, {k: torch.from_numpy(v) for k, v in initial.items()}


def test_scoring_flags_backdoored_models_among_benign_ones(real_setup) -> None:  # type: ignore[no-untyped-def]
    """Two BadNets attackers among 8 label-skewed clients, 2 epochs each from a briefly trained
    model. At poison rate 0.5 the second attacker's imprint was float noise: combined score 1.03
    against the threshold 1.5 on this CPU and on CI (0.59-1.53 over thread counts and epochs),
    so it was flagged on one machine and not on another. At 0.8 the attackers score 2.41-2.43
    and 4.18-4.46 and the benign clients at most 0.47, at 1 and at 2 threads (measured)."""
    server_data, train, initial = real_setup
    cfg = RunConfig.from_flower({"defense": "clipfed", "num-clients": 8, "num-malicious": 2,
                                 "poison-rate": 0.8, "data-dir": str(SHARED_ASSETS)})
    attack = create_attack(cfg)
    rng = np.random.default_rng(0)
    replies = []
    for pid in range(8):
        classes = rng.choice(10, size=4, replace=False)  # label-skewed shards, as under Non-IID
        rows = rng.choice(np.flatnonzero(np.isin(train.labels, classes)), size=600, replace=False)
        images, labels = np.asarray(train.images[rows]), train.labels[rows]
        malicious = pid in (2, 6)
        if malicious:
            poisoned = attack.data.poison(images, labels, rng)
            images, labels = poisoned.images, poisoned.labels
        replies.append(train_reply(100 + pid, pid, train_copy(initial, images, labels, seed=pid, epochs=2),
                                   600, malicious))
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg, server_data=server_data, on_report=reports.append)
    strategy.global_arrays = arrays_of({k: v.numpy() for k, v in initial.items()})
    arrays, metrics = strategy.aggregate_train(1, replies)
    report = reports[0]
    scores = report.details["scores"]
    assert arrays is not None and metrics is not None
    assert set(report.excluded) == {2, 6}, scores
    assert report.detection() == {"tp": 2, "fp": 0, "fn": 0, "tn": 6}
    assert set(scores) >= {"partition", "combined", "proto", "sybil"}
    assert {"pre_seconds", "post_seconds", "post_loss", "clip_bound"} <= set(report.details)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("target", ["teacher", "better-of"])
def test_post_alignment_lowers_the_asr_of_a_backdoored_model(fake_data_dir: Path, server_data,  # type: ignore[no-untyped-def]
                                                             target: str) -> None:
    """On the 200-image toy ASR moves by whole classes, so which classes the alignment frees
    depends on the float order: one thread pins it on one machine (1 -> 0.22 at one thread; 1 ->
    0.67 at two threads, measured; at lr 0.02, used before, two threads left 1 -> 0.89), but not
    across CPUs: on another Xeon, one thread, the teacher target gave 1 -> 0.56 and ``better-of``
    1 -> 0.79 (0.89 with 300 steps: where the backdoored model knows a server label better than
    this toy's weak teacher it is held to its own outputs, by design). So the bar is a drop of
    at least 3 of the 9 non-target classes for the teacher and 1 for ``better-of``; a step that
    did nothing leaves ASR at 1. It once depended on the order of the tests, through the thread
    count a server-dataset build left behind (``devices.torch_threads`` now restores it)."""
    cfg = run_cfg(fake_data_dir, **{"clipfed-pre": False, "clipfed-post-steps": 150,
                                    "clipfed-post-lr": 0.05, "clipfed-kd-target": target})
    train, test = load_cifar10(str(fake_data_dir))
    attack = create_attack(cfg)
    poisoned = attack.data.poison(np.asarray(train.images), train.labels, np.random.default_rng(0))
    torch.manual_seed(0)
    backdoored = train_copy(create_model("cnn", 10).state_dict(), poisoned.images, poisoned.labels,
                            seed=0, epochs=8)
    evaluator = BackdoorEvaluator(test, attack)
    model = create_model("cnn", 10)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in backdoored.items()})
    before = evaluator(model)
    assert before.asr > 0.8, "the backdoor did not take; the test would prove nothing"

    strategy = create_defense(cfg, server_data=server_data)
    aligned = strategy.post_align(1, arrays_of(backdoored))
    model.load_state_dict(state_of(aligned))
    after = evaluator(model)
    assert after.asr <= before.asr - (0.3 if target == "teacher" else 0.1), (before, after)
    assert after.ma >= before.ma - 0.2


def test_kd_targets_take_whichever_knows_the_label_better() -> None:
    labels = torch.tensor([0, 1])
    teacher = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.3, 0.3, 0.4]]))
    anchor = torch.log(torch.tensor([[0.1, 0.8, 0.1],      # a backdoored aggregate: the teacher teaches
                                     [0.05, 0.9, 0.05]]))  # the aggregate knows label 1 better: kept
    targets, taught = kd_targets(teacher, anchor, labels, temperature=1.0)
    assert taught.tolist() == [True, False]
    np.testing.assert_allclose(targets.numpy(), [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]], atol=1e-6)
    softened, _ = kd_targets(teacher, anchor, labels, temperature=2.0)
    np.testing.assert_allclose(softened.sum(1).numpy(), [1.0, 1.0], atol=1e-6)
    assert softened[0, 0] < 0.9  # temperature flattens the chosen distribution
    diverged = torch.full_like(anchor, float("nan"))  # NaN compares False: it must not win the choice
    targets, taught = kd_targets(teacher, diverged, labels, temperature=1.0)
    assert taught.tolist() == [True, True] and torch.isfinite(targets).all()


def test_better_of_leaves_a_model_that_knows_the_server_labels_to_itself(fake_data_dir: Path,  # type: ignore[no-untyped-def]
                                                                         server_data) -> None:
    """A model trained on the server images' labels (clean and trigger-like copies: what
    ``post_align`` draws from) until it is surer of them than the teacher is taught by the teacher
    on few images; a fresh model, which knows nothing, on most. At lr 0.005 for 5 epochs it reaches
    0.96 on them; at 0.02, used before, the toy CNN diverged within 8 epochs on one CPU and not on
    another, and a NaN model's share then read 0."""
    cfg = run_cfg(fake_data_dir, **{"clipfed-pre": False, "clipfed-post-steps": 3,
                                    "clipfed-kd-target": "better-of"})
    strategy = create_defense(cfg, server_data=server_data)
    torch.manual_seed(0)
    fresh = create_model("cnn", 10).state_dict()
    learned = train_copy(fresh, np.asarray(server_data.images), server_data.labels, seed=0, epochs=5, lr=0.005)
    strategy.post_align(1, arrays_of({k: v.numpy() for k, v in fresh.items()}))
    fresh_share = strategy.details["kd_teacher_share"]["first"]
    strategy.post_align(1, arrays_of(learned))
    learned_share = strategy.details["kd_teacher_share"]["first"]
    assert fresh_share > 0.6 and learned_share < fresh_share / 2, (fresh_share, learned_share)


def test_better_of_anchor_is_the_aggregate_as_it_came_frozen_and_in_eval_mode(  # type: ignore[no-untyped-def]
        fake_data_dir: Path, server_data, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step's anchor logits are those of the model handed to ``post_align``, in eval mode
    (a ResNet, so BatchNorm's batch statistics would show), not of the model being aligned."""
    cfg = run_cfg(fake_data_dir, **{"model": "resnet20", "clipfed-pre": False, "clipfed-post-steps": 3,
                                    "clipfed-post-batch": 16, "clipfed-kd-target": "better-of"})
    strategy = create_defense(cfg, server_data=server_data)
    torch.manual_seed(0)
    start = {k: v.numpy().copy() for k, v in create_model("resnet20", 10).state_dict().items()}
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = copy.deepcopy

    def recording_copy(obj):  # type: ignore[no-untyped-def]
        anchor = real(obj)
        anchor.register_forward_hook(lambda module, args, out: calls.append((args[0].clone(), out.detach().clone())))
        return anchor

    monkeypatch.setattr(clipfed_defense, "copy", SimpleNamespace(deepcopy=recording_copy))
    strategy.post_align(1, arrays_of(start))
    reference = create_model("resnet20", 10)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in start.items()})
    reference.eval()
    assert len(calls) == 3
    with torch.no_grad():
        for x, out in calls:
            torch.testing.assert_close(reference(x), out)


def test_clipfed_aggregates_mock_replies_and_clips_to_the_median_norm(fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    cfg = run_cfg(fake_data_dir, **{"clipfed-pre": False, "clipfed-post": False, "max-update-norm": 1e6})
    torch.manual_seed(0)
    base = {k: v.numpy() for k, v in create_model("cnn", 10).state_dict().items()}
    scales = [1.0, 2.0, 3.0, 100.0]
    direction = {k: np.ones_like(v) for k, v in base.items()}
    replies = [train_reply(10 + i, i, {k: base[k] + s * direction[k] for k in base}, 10)
               for i, s in enumerate(scales)]
    strategy = create_defense(cfg, server_data=server_data)
    strategy.global_arrays = arrays_of(base)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    # median norm is that of scale 2.5; updates are clipped to it, then averaged
    expected = np.mean([min(s, 2.5) for s in scales])
    key = next(iter(base))
    np.testing.assert_allclose(arrays[key].numpy() - base[key], expected * direction[key], rtol=1e-3)


def test_teacher_only_trains_without_clients(fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    cfg = run_cfg(fake_data_dir, defense="teacher-only", **{"clipfed-post-steps": 5})
    strategy = create_defense(cfg, server_data=server_data)
    torch.manual_seed(0)
    initial = arrays_of({k: v.numpy() for k, v in create_model("cnn", 10).state_dict().items()})
    assert list(strategy.configure_train(1, initial, __import__("flwr").app.ConfigRecord(), None)) == []
    arrays, _ = strategy.aggregate_train(1, [])
    assert arrays is not None
    key = next(iter(arrays.keys()))
    assert not np.array_equal(arrays[key].numpy(), initial[key].numpy())
