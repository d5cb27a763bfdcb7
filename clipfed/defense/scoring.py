"""CLIP-Fed's pre-aggregation scores: how suspicious each client update looks on the server data.

Every signal is one vector over clients, larger meaning more suspicious, computed with one
forward pass of each client model over a fixed probe of the server dataset (clean images and
their trigger-like copies):

- ``kl``: divergence from the teacher on clean images, z-scored *per class* across clients and
  averaged, so a Non-IID client is compared with others on the same class, not with the mean;
- ``proto``: how far the client's class prototypes (mean penultimate features on trigger-like
  images of each class) moved from the current global model's, per-class z, max over the classes
  the client evidently learned (clean recall >= 0.2);
- ``trigger``: collapse onto one class on trigger-like copies relative to their clean sources;
- ``geometry``: 1 - cosine of the update to the coordinate-wise median update;
- ``sybil``: the highest cosine to any other update (colluding attackers share a direction).

Signals are combined as the mean of their robust (median/MAD) z-scores across clients, each
clipped at zero from below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipfed.defense.updates import robust_z
from clipfed.models import ClassifierNet


@dataclass(frozen=True)
class Probe:
    """Clean probe images, their trigger-like copies, labels and the teacher's clean logits."""

    clean_x: torch.Tensor
    clean_y: torch.Tensor
    teacher_logits: torch.Tensor
    augmented_x: torch.Tensor
    augmented_y: torch.Tensor
    augmented_source: torch.Tensor  # row of clean_x each copy came from
    num_classes: int


@dataclass(frozen=True)
class ModelView:
    """One model's outputs on the probe."""

    clean_logits: torch.Tensor
    augmented_logits: torch.Tensor
    augmented_features: torch.Tensor


@torch.no_grad()
def view(model: ClassifierNet, probe: Probe, batch: int = 1000) -> ModelView:
    model.eval()

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.cat([model.features(x[i : i + batch]) for i in range(0, len(x), batch)])
        return model.head(feats), feats

    clean_logits, _ = run(probe.clean_x)
    augmented_logits, augmented_features = run(probe.augmented_x)
    return ModelView(clean_logits, augmented_logits, augmented_features)


def class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, ...) mean of ``values`` rows per label (zeros for an absent class)."""
    sums = torch.zeros(num_classes, *values.shape[1:]).index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).view(-1, *[1] * (values.dim() - 1))
    return sums / counts


def kl_signal(views: list[ModelView], probe: Probe, temperature: float = 1.0) -> torch.Tensor:
    target = F.softmax(probe.teacher_logits / temperature, dim=1)
    per_class = torch.stack([
        class_means(F.kl_div(F.log_softmax(v.clean_logits / temperature, 1), target, reduction="none").sum(1),
                    probe.clean_y, probe.num_classes)
        for v in views
    ])  # (clients, classes)
    return robust_z(per_class, dim=0).mean(1)


def known_classes(view_: ModelView, probe: Probe, min_recall: float = 0.2) -> torch.Tensor:
    """(C,) mask of classes the client evidently learned: its clean recall on them >= min_recall.
    Under label skew a client drifts on classes it never saw; that is not suspicious."""
    correct = (view_.clean_logits.argmax(1) == probe.clean_y).float()
    return class_means(correct, probe.clean_y, probe.num_classes) >= min_recall


def proto_signal(views: list[ModelView], global_view: ModelView, probe: Probe) -> torch.Tensor:
    reference = class_means(global_view.augmented_features, probe.augmented_y, probe.num_classes)
    shifts = torch.stack([
        1 - F.cosine_similarity(class_means(v.augmented_features, probe.augmented_y, probe.num_classes),
                                reference, dim=1)
        for v in views
    ])  # (clients, classes)
    known = torch.stack([known_classes(v, probe) for v in views])
    z = robust_z(shifts, dim=0).masked_fill(~known, float("-inf")).max(1).values
    return torch.nan_to_num(z, neginf=0.0)


def trigger_signal(views: list[ModelView], probe: Probe) -> torch.Tensor:
    scores = []
    for v in views:
        on_copies = torch.bincount(v.augmented_logits.argmax(1), minlength=probe.num_classes).float()
        on_sources = torch.bincount(v.clean_logits.argmax(1)[probe.augmented_source],
                                    minlength=probe.num_classes).float()
        scores.append(((on_copies - on_sources) / len(probe.augmented_source)).max())
    return torch.stack(scores)


def geometry_signal(updates: torch.Tensor) -> torch.Tensor:
    reference = updates.median(dim=0).values
    return 1 - F.cosine_similarity(updates, reference.unsqueeze(0), dim=1)


def sybil_signal(updates: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(updates, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-1.0)
    return similarity.max(1).values


def score_clients(signals: list[str], views: list[ModelView], global_view: ModelView, probe: Probe,
                  updates: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw scores of each requested signal, one value per client."""
    compute = {
        "kl": lambda: kl_signal(views, probe),
        "proto": lambda: proto_signal(views, global_view, probe),
        "trigger": lambda: trigger_signal(views, probe),
        "geometry": lambda: geometry_signal(updates),
        "sybil": lambda: sybil_signal(updates),
    }
    return {name: compute[name]() for name in signals}


def combine(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over signals of each client's robust z-score, negative z counted as 0: being unusually
    unremarkable on one signal (a lone attacker has no sybil partner) must not cancel another."""
    return torch.stack([robust_z(s).clamp_min(0) for s in scores.values()]).mean(0)
