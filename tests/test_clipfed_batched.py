"""CLIP-Fed's batched scoring equals the straightforward per-model computation.

The reference here is what ``ClipFedDefense.select`` computed before its passes were batched:
one model loaded at a time, its features and logits on the probe, then every signal in a Python
loop over the models (class means by boolean masks, one ``bincount`` per model). The batched
path (``scoring.views`` with several models per ``vmap`` pass, and the vectorised signals) must
give the same scores within float tolerance, and the same flagged clients.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flower_mocks import arrays_of, server_identity, train_reply  # noqa: F401  (fixture)

from clipfed.config import RunConfig
from clipfed.defense import create_defense
from clipfed.defense.scoring import PassSize, Probe, combine, pass_size, score_clients, views
from clipfed.defense.updates import robust_z
from clipfed.models import ClassifierNet, create_model
from clipfed.runs.report import AggregationReport

SIGNALS = ["kl", "proto", "trigger", "geometry", "sybil"]
State = dict[str, torch.Tensor]


# -- the per-model reference ----------------------------------------------------------------------
@torch.no_grad()
def reference_view(model: ClassifierNet, state: State, probe: Probe) -> dict[str, torch.Tensor]:
    """One model's (clean logits, augmented logits, augmented features) on the probe, on the CPU."""
    model.load_state_dict(state)
    model.eval()
    clean = model(probe.clean_x.cpu())
    features = model.features(probe.augmented_x.cpu())
    return {"clean": clean, "augmented": model.head(features), "features": features}


def reference_class_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, ...) mean of the rows of each class, by masks (zeros for an absent class)."""
    return torch.stack([values[labels == c].mean(0) if (labels == c).any() else values.new_zeros(values.shape[1:])
                        for c in range(num_classes)])


def reference_scores(signals: list[str], model: ClassifierNet, states: list[State], global_state: State,
                     probe: Probe, updates: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every signal computed model by model, as the unbatched code did."""
    cpu = {name: getattr(probe, name).cpu() for name in ("clean_y", "teacher_logits", "augmented_y",
                                                         "augmented_source")}
    classes = probe.num_classes
    outs = [reference_view(model, s, probe) for s in states]
    reference = reference_class_mean(reference_view(model, global_state, probe)["features"], cpu["augmented_y"],
                                     classes)
    target = F.softmax(cpu["teacher_logits"], 1)
    kl = torch.stack([
        reference_class_mean(F.kl_div(F.log_softmax(o["clean"], 1), target, reduction="none").sum(1),
                             cpu["clean_y"], classes) for o in outs])
    shifts = torch.stack([
        1 - F.cosine_similarity(reference_class_mean(o["features"], cpu["augmented_y"], classes), reference, dim=1)
        for o in outs])
    known = torch.stack([
        reference_class_mean((o["clean"].argmax(1) == cpu["clean_y"]).float(), cpu["clean_y"], classes) >= 0.2
        for o in outs])
    trigger = torch.stack([
        ((torch.bincount(o["augmented"].argmax(1), minlength=classes)
          - torch.bincount(o["clean"].argmax(1)[cpu["augmented_source"]], minlength=classes)).float()
         / len(cpu["augmented_source"])).max()
        for o in outs])
    unit = F.normalize(updates, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-1.0)
    compute: dict[str, Callable[[], torch.Tensor]] = {
        "kl": lambda: robust_z(kl, dim=0).mean(1),
        "proto": lambda: torch.nan_to_num(
            robust_z(shifts, dim=0).masked_fill(~known, float("-inf")).max(1).values, neginf=0.0),
        "trigger": lambda: trigger,
        "geometry": lambda: 1 - F.cosine_similarity(updates, updates.median(0).values.unsqueeze(0), dim=1),
        "sybil": lambda: similarity.max(1).values,
    }
    return {name: compute[name]() for name in signals}


def flagged(combined: torch.Tensor, threshold: float = 1.5) -> set[int]:
    """``select``'s rule: above the threshold, at most (n - 1) // 2 of the highest."""
    order = torch.argsort(combined, descending=True)
    return {int(i) for i in order[: (len(combined) - 1) // 2] if combined[i] > threshold}


# -- random models on a tiny random probe ---------------------------------------------------------
def tiny_probe(device: torch.device, per_class: int = 3, copies: int = 2, num_classes: int = 10) -> Probe:
    generator = torch.Generator().manual_seed(0)
    n = per_class * num_classes
    source = torch.arange(n).repeat(copies)
    clean_x = torch.randn(n, 3, 32, 32, generator=generator)
    augmented_x = clean_x[source] + 0.5 * torch.randn(len(source), 3, 32, 32, generator=generator)
    clean_y = torch.arange(n) % num_classes
    return Probe(clean_x=clean_x.to(device), clean_y=clean_y.to(device),
                 teacher_logits=torch.randn(n, num_classes, generator=generator).to(device),
                 augmented_x=augmented_x.to(device), augmented_y=clean_y[source].to(device),
                 augmented_source=source.to(device), num_classes=num_classes)


def client_states(name: str, clients: int, outliers: tuple[int, ...]) -> tuple[State, list[State], torch.Tensor]:
    """A global model and ``clients`` perturbations of it; the ``outliers`` share one large
    direction (colluders). BatchNorm statistics are randomised per model, so eval-mode BN must
    read each model's own. Returns (global state, client states, (clients, d) parameter updates)."""
    torch.manual_seed(1)
    model = create_model(name, 10)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k for k, _ in model.named_buffers()}
    shared = {k: torch.randn_like(v) for k, v in global_state.items() if k not in buffers}
    states = []
    for i in range(clients):
        state = {}
        for k, v in global_state.items():
            if k.endswith("running_mean"):
                state[k] = 0.1 * torch.randn_like(v)
            elif k.endswith("running_var"):
                state[k] = 0.5 + torch.rand_like(v)
            elif k in buffers:
                state[k] = v.clone()
            else:
                step = shared[k] if i in outliers else 0.0
                state[k] = v + (0.3 * torch.randn_like(v) + step) * v.abs().mean()
        states.append(state)
    keys = [k for k in global_state if k not in buffers]
    updates = torch.stack([torch.cat([(s[k] - global_state[k]).reshape(-1) for k in keys]) for s in states])
    return global_state, states, updates


DEVICES = [
    pytest.param("cpu", PassSize(models=3, images=7), id="cpu-vmap-3x7"),
    pytest.param("cpu", None, id="cpu-default"),
    pytest.param("cuda", None, id="cuda-default", marks=pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device on this machine: the batched passes on the GPU are compared there")),
]


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
@pytest.mark.parametrize(("device_name", "size"), DEVICES)
def test_batched_scores_equal_per_model_scores(name: str, device_name: str, size: PassSize | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    device = torch.device(device_name)
    if device.type == "cuda":  # compare fp32 with fp32, not TF32 rounding
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    probe = tiny_probe(device)
    global_state, states, updates = client_states(name, clients=8, outliers=(2, 5))
    model = create_model(name, 10).to(device)
    outputs = views(model, iter([*states, global_state]), probe, size or pass_size(device))
    assert outputs.clean_logits.shape == (9, len(probe.clean_y), 10)
    assert outputs.augmented_features.shape == (9, len(probe.augmented_y), model.feature_dim)
    batched = score_clients(SIGNALS, outputs[:-1], outputs[-1:], probe, updates)
    expected = reference_scores(SIGNALS, create_model(name, 10), states, global_state, probe, updates)
    for signal in SIGNALS:
        assert batched[signal].device.type == "cpu"
        torch.testing.assert_close(batched[signal], expected[signal], rtol=1e-4, atol=1e-4, msg=signal)
    assert flagged(combine(batched)) == flagged(combine(expected))
    assert {2, 5} <= flagged(combine(batched))  # the colluders stand out: the comparison means something


def select_round(data_dir: Path, server_data, signals: str) -> tuple[AggregationReport, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """One CLIP-Fed round on 7 mock clients (1 and 4 outliers) with ``signals`` configured: its
    report, and every signal computed one model at a time (``reference_scores``)."""
    cfg = RunConfig.from_flower({"defense": "clipfed", "num-clients": 7, "num-malicious": 2, "device": "cpu",
                                 "data-dir": str(data_dir), "clipfed-signals": signals,
                                 "clipfed-probe-size": 40, "clipfed-post": False})
    global_state, states, updates = client_states("cnn", clients=7, outliers=(1, 4))
    replies = [train_reply(10 + i, i, {k: v.numpy() for k, v in s.items()}, 50, malicious=i in (1, 4))
               for i, s in enumerate(states)]
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg, server_data=server_data, on_report=reports.append)
    strategy.global_arrays = arrays_of({k: v.numpy() for k, v in global_state.items()})
    strategy.aggregate_train(1, replies)
    return reports[0], reference_scores(SIGNALS, create_model("cnn", 10), states, global_state, strategy.probe,
                                        updates)


@pytest.mark.usefixtures("server_identity")
def test_select_flags_what_the_per_model_computation_flags(fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    """Through ``ClipFedDefense.select`` (the run's own probe and pass size): same scores, same exclusions."""
    report, expected = select_round(fake_data_dir, server_data, ",".join(SIGNALS))
    for signal in SIGNALS:
        np.testing.assert_allclose(report.details["scores"][signal], expected[signal].numpy(), rtol=1e-3,
                                   atol=2e-4, err_msg=signal)
    assert set(report.excluded) == flagged(combine(expected)) == {1, 4}
    assert "pre_seconds" in report.details


@pytest.mark.usefixtures("server_identity")
def test_every_signal_is_recorded_and_only_the_configured_ones_combined(fake_data_dir: Path, server_data) -> None:  # type: ignore[no-untyped-def]
    """What choosing other signals would have seen is in every run's result.json: all five are
    scored and recorded, the combined score (and with it who is excluded) uses clipfed-signals'."""
    report, expected = select_round(fake_data_dir, server_data, "geometry")
    details = report.details
    assert set(details["scores"]) == {"partition", "combined", *SIGNALS} and details["signals"] == ["geometry"]
    alone = combine({"geometry": expected["geometry"]})
    np.testing.assert_allclose(details["scores"]["combined"], alone.numpy(), atol=1e-4)
    assert set(report.excluded) == flagged(alone)


def test_views_of_a_probe_without_trigger_like_copies_are_empty_not_an_error() -> None:
    probe = tiny_probe(torch.device("cpu"), copies=0)
    global_state, states, _ = client_states("cnn", clients=3, outliers=())
    outputs = views(create_model("cnn", 10), [*states, global_state], probe, PassSize(models=2, images=8))
    assert outputs.clean_logits.shape == (4, len(probe.clean_y), 10)
    assert outputs.augmented_logits.shape == (4, 0, 10) and outputs.augmented_features.shape == (4, 0, 192)
    updates = torch.randn(3, 5)
    scores = score_clients(["kl", "proto", "trigger", "geometry", "sybil"], outputs[:-1], outputs[-1:], probe, updates)
    assert all(torch.isfinite(s).all() for s in scores.values()), scores  # recorded every round: never NaN
