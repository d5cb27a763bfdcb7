"""Two rules of CLIP-Fed's pre-aggregation scoring (``clipfed.defense.scoring``), on hand-made
scores: a lone attacker's missing sybil partner cannot hide its prototype shift, and a benign client
is not judged on a class it never learned (docs/results.md, "Which detection signals separate
attackers")."""

from __future__ import annotations

import torch

from clipfed.defense.scoring import ModelViews, Probe, combine, proto_signal
from clipfed.defense.updates import robust_z


def test_a_negative_z_counts_as_zero_so_a_lone_attacker_stays_flagged() -> None:
    proto = torch.tensor([0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08, 0.90])  # client 7 shifts its prototypes
    sybil = torch.tensor([0.50, 0.55, 0.52, 0.50, 0.53, 0.51, 0.54, -0.90])  # and has no partner
    combined = combine({"proto": proto, "sybil": sybil})
    assert int(combined.argmax()) == 7
    assert torch.isclose(combined[7], robust_z(proto)[7] / 2)  # its sybil z (very negative) counts as 0
    unclamped = (robust_z(proto) + robust_z(sybil)) / 2
    assert unclamped[7] < 1.5 < combined[7]  # a plain mean of z would let it pass the default threshold


def _views(features: torch.Tensor, predicts_class_1: torch.Tensor) -> ModelViews:
    """M models on 4 clean images (labels 0, 0, 1, 1) and their 4 copies; a model that does not
    predict class 1 has learned only class 0."""
    right = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
    only_0 = torch.tensor([[4.0, 0.0]] * 4)
    clean = torch.stack([right if learned else only_0 for learned in predicts_class_1])
    return ModelViews(clean, clean.clone(), features)


def test_proto_ignores_the_classes_a_client_never_learned() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    probe = Probe(torch.zeros(4, 3, 2, 2), labels, torch.zeros(4, 2), torch.zeros(4, 3, 2, 2), labels,
                  torch.arange(4), num_classes=2)
    reference = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    generator = torch.Generator().manual_seed(0)
    features = reference + 0.05 * torch.randn(6, 4, 2, generator=generator)
    features[0, 2:] = torch.tensor([1.0, 0.0])  # client 0 drifts far on class 1, which it never saw
    learned = torch.tensor([False, True, True, True, True, True])
    views = _views(features, learned)
    scores = proto_signal(views, ModelViews(views.clean_logits[:1], views.augmented_logits[:1],
                                            reference.unsqueeze(0)), probe)
    shifts = 1 - torch.nn.functional.cosine_similarity(
        features.view(6, 2, 2, 2).mean(2), reference.view(2, 2, 2).mean(1).unsqueeze(0), dim=2)
    z = robust_z(shifts, dim=0)  # (clients, classes)
    assert z[0, 1] > 10  # its class-1 prototype moved far more than anyone's
    assert torch.isclose(scores[0], z[0, 0])  # but it is judged on class 0 alone
    assert torch.allclose(scores[1:], z[1:].max(1).values)  # the others on both classes
