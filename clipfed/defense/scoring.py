"""CLIP-Fed's pre-aggregation scores: how suspicious each client update looks on the server data.

Every signal is one vector over clients, larger meaning more suspicious, computed from every
client model's outputs on a fixed probe of the server dataset (clean images and their
trigger-like copies), all models stacked along a leading clients dimension (``ModelViews``):

- ``kl``: divergence from the teacher on clean images, z-scored *per class* across clients and
  averaged, so a Non-IID client is compared with others on the same class, not with the mean;
- ``proto``: how far the client's class prototypes (mean penultimate features on trigger-like
  images of each class) moved from the current global model's, per-class z, max over the classes
  the client evidently learned (clean recall >= 0.2);
- ``trigger``: collapse onto one class on trigger-like copies relative to their clean sources;
- ``geometry``: 1 - cosine of the update to the coordinate-wise median update;
- ``sybil``: the highest cosine to any other update (colluding attackers share a direction).

Signals are combined as the mean of their robust (median/MAD) z-scores across clients, each
clipped at zero from below; ``running_scores`` averages a client's combined scores over the rounds
it was sampled in, and the exclusion threshold reads that.

The forward passes (``views``) run on the probe's device, ``PassSize.models`` models at a time:
on CUDA several models in one pass (their parameters and buffers stacked along a new leading
dimension, as ``torch.func.stack_module_state`` does, and ``functional_call`` under ``vmap``); on
the CPU one model per pass (``functional_call`` on its state, channels-last), which measured 2-3x
faster there than vmap (see ``pass_size``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from clipfed.config import INFERENCE_BATCH
from clipfed.defense.updates import robust_z
from clipfed.devices import autocast
from clipfed.models import ClassifierNet


@dataclass(frozen=True)
class Probe:
    """Clean probe images, their trigger-like copies, labels and the teacher's clean logits.

    Attributes:
        clean_x: Normalised float32 images (n, 3, H, W).
        clean_y: int64 labels (n,).
        teacher_logits: float32 (n, C), the teacher's logits on ``clean_x``.
        augmented_x: Normalised float32 trigger-like copies (a, 3, H, W); each keeps its clean label.
        augmented_y: int64 labels (a,).
        augmented_source: int64 (a,), the row of ``clean_x`` each copy came from.
        num_classes: C.
    """

    clean_x: torch.Tensor
    clean_y: torch.Tensor
    teacher_logits: torch.Tensor
    augmented_x: torch.Tensor
    augmented_y: torch.Tensor
    augmented_source: torch.Tensor
    num_classes: int

    @property
    def device(self) -> torch.device:
        """Where every tensor of the probe lives (and where ``views`` computes)."""
        return self.clean_x.device


@dataclass(frozen=True)
class ModelViews:
    """M models' outputs on the probe, stacked over models (float32, on the probe's device).

    Attributes:
        clean_logits: (M, n, C) logits on the clean images.
        augmented_logits: (M, a, C) logits on the trigger-like copies.
        augmented_features: (M, a, D) penultimate features on the trigger-like copies.
    """

    clean_logits: torch.Tensor
    augmented_logits: torch.Tensor
    augmented_features: torch.Tensor

    def __getitem__(self, models: slice) -> ModelViews:
        """The views of a slice of the models (``views[:-1]``: all but the last)."""
        return ModelViews(self.clean_logits[models], self.augmented_logits[models], self.augmented_features[models])


@dataclass(frozen=True)
class PassSize:
    """How much one forward pass of ``views`` holds: ``models`` models x ``images`` probe images.

    Peak activation memory of a pass is about models x images x the model's activations per
    image (fp32: cnn ~0.2 MB, resnet20 ~0.3 MB, resnet18 ~1-2 MB with vmap's reshapes), so the
    CUDA setting (8 x 500 = 4000 image-passes) stays under ~8 GB for resnet18 and ~1 GB for the
    cnn; the stacked parameters add models x the model's size (resnet18: 8 x 45 MB).
    """

    models: int
    images: int


def pass_size(device: torch.device) -> PassSize:
    """The pass size ``views`` uses on ``device``.

    CPU: one model per pass, because vmap is slower there. Measured on this project's 2-core CPU
    (shared with other jobs, so noisy), random cnn models, forward only: 9 models x 1000 images,
    a loop over the models 8.3 s, ``vmap`` 21-29 s at 9 models per pass, 18 s at 3, 15 s at 1;
    4 models x 1500 images (the default probe), one per pass 2.9-3.2 s, ``vmap`` 4 per pass
    7.4 s. Torch's CPU kernels for the grouped convolutions that vmap makes of a batch of models
    are 2-3x slower than separate convolutions. Images per CPU pass: ``INFERENCE_BATCH`` (6 cnn
    models on the default probe: 2.4 s at 256 images a pass, 3.5 s at 1000, identical outputs).
    CUDA: 8 models per pass (memory: ``PassSize``), which turns N+1 narrow launches per layer into
    (N+1)/8 wide ones.
    """
    return PassSize(models=1, images=INFERENCE_BATCH) if device.type == "cpu" else PassSize(models=8, images=500)


class _FeaturesAndLogits(nn.Module):
    """``net``'s forward returning ``(features, logits)``, for ``functional_call`` (keys ``net.*``)."""

    def __init__(self, net: ClassifierNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.features(x)
        return features, self.net.head(features)


def _batches(states: Iterable[Mapping[str, torch.Tensor]], size: int) -> Iterable[list[Mapping[str, torch.Tensor]]]:
    """``states`` in lists of ``size`` (the last one shorter), read lazily."""
    iterator = iter(states)
    while batch := list(islice(iterator, size)):
        yield batch


@torch.no_grad()
def views(model: ClassifierNet, states: Iterable[Mapping[str, torch.Tensor]], probe: Probe,
          size: PassSize, amp: bool = False) -> ModelViews:
    """Every model's features and logits on the probe, ``size.models`` models per pass.

    Args:
        model: A module of the states' architecture on the probe's device; only its structure is
            used (its own parameters are untouched, it is put in eval mode: BatchNorm reads each
            state's running statistics).
        states: M state dicts (parameters and buffers, any device), read ``size.models`` at a time,
            so a generator keeps only one pass's states in memory.
        probe: The probe, on the device the passes run on.
        size: Models and probe images per pass (``pass_size(probe.device)``).
        amp: bf16 autocast on CUDA (``devices.autocast``); outputs are float32 either way.

    Returns:
        The stacked views, M models in the order of ``states``.
    """
    model.eval()
    wrapper = _FeaturesAndLogits(model)
    device = probe.device
    # The per-model pass runs channels-last (weights and images; ``to_tensor``'s images already
    # are): the fast path of the CPU's convolution kernels.
    channels_last = size.models == 1

    def forward(x: torch.Tensor, chunk: list[Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(models, len(x), D) features and (models, len(x), C) logits of one chunk of models."""
        if channels_last:
            state = {f"net.{k}": v.to(device).contiguous(memory_format=torch.channels_last) if v.dim() == 4
                     else v.to(device) for k, v in chunk[0].items()}
            x = x.contiguous(memory_format=torch.channels_last)
            features, logits = functional_call(wrapper, state, (x,))
            return features.unsqueeze(0), logits.unsqueeze(0)
        stacked = {f"net.{k}": torch.stack([s[k] for s in chunk]).to(device) for k in chunk[0]}
        return vmap(lambda state, images: functional_call(wrapper, state, (images,)), in_dims=(0, None))(stacked, x)

    def run(x: torch.Tensor, chunk: list[Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, amp):
            parts = [forward(x[i : i + size.images], chunk) for i in range(0, len(x), size.images)]
        if not parts:  # no image (no trigger-like copy): empty outputs of the right widths
            return (x.new_zeros(len(chunk), 0, model.feature_dim),
                    x.new_zeros(len(chunk), 0, model.head.out_features))
        return torch.cat([f for f, _ in parts], 1).float(), torch.cat([z for _, z in parts], 1).float()

    clean, augmented, features = [], [], []
    for chunk in _batches(states, size.models):
        clean.append(run(probe.clean_x, chunk)[1])
        augmented_features, augmented_logits = run(probe.augmented_x, chunk)
        augmented.append(augmented_logits)
        features.append(augmented_features)
    return ModelViews(torch.cat(clean), torch.cat(augmented), torch.cat(features))


def class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per model, the mean of ``values`` rows per label (zeros for an absent class).

    Args:
        values: (M, n, ...) float, rows of M models on the same n probe images.
        labels: (n,) int64 in [0, num_classes), shared by the M models.
        num_classes: C.

    Returns:
        (M, C, ...) float, on ``values``' device.
    """
    sums = values.new_zeros(values.shape[0], num_classes, *values.shape[2:]).index_add_(1, labels, values)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1)
    return sums / counts.view(1, -1, *[1] * (values.dim() - 2))


def class_counts(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per model, how many rows predict each class: one ``bincount`` over the M models, model m's
    classes offset to [m C, (m + 1) C).

    Args:
        predictions: (M, n) int64 in [0, num_classes).
        num_classes: C.

    Returns:
        (M, C) float32.
    """
    models = predictions.shape[0]
    offsets = torch.arange(models, device=predictions.device).unsqueeze(1) * num_classes
    counts = torch.bincount((predictions + offsets).reshape(-1), minlength=models * num_classes)
    return counts.view(models, num_classes).float()


def kl_signal(views: ModelViews, probe: Probe, temperature: float = 1.0) -> torch.Tensor:
    """(M,) mean over classes of the per-class robust z of KL(teacher || client) on clean images."""
    target = F.softmax(probe.teacher_logits / temperature, dim=1)  # (n, C)
    log_probs = F.log_softmax(views.clean_logits / temperature, dim=2)  # (M, n, C)
    divergence = F.kl_div(log_probs, target.expand_as(log_probs), reduction="none").sum(2)  # (M, n)
    per_class = class_means(divergence, probe.clean_y, probe.num_classes)  # (clients, classes)
    return robust_z(per_class, dim=0).mean(1)


def known_classes(views: ModelViews, probe: Probe, min_recall: float = 0.2) -> torch.Tensor:
    """(M, C) mask of the classes each client evidently learned: its clean recall >= min_recall.
    Under label skew a client drifts on classes it never saw; that is not suspicious."""
    correct = (views.clean_logits.argmax(2) == probe.clean_y).float()  # (M, n)
    return class_means(correct, probe.clean_y, probe.num_classes) >= min_recall


def proto_signal(views: ModelViews, global_view: ModelViews, probe: Probe) -> torch.Tensor:
    """(M,) max over known classes of the per-class robust z of the prototype shift
    (1 - cosine of the client's class-mean features on trigger-like copies to the global model's).

    ``global_view`` holds one model (the global model the clients started from)."""
    reference = class_means(global_view.augmented_features, probe.augmented_y, probe.num_classes)  # (1, C, D)
    prototypes = class_means(views.augmented_features, probe.augmented_y, probe.num_classes)  # (M, C, D)
    shifts = 1 - F.cosine_similarity(prototypes, reference, dim=2)  # (clients, classes)
    z = robust_z(shifts, dim=0).masked_fill(~known_classes(views, probe), float("-inf")).max(1).values
    return torch.nan_to_num(z, neginf=0.0)


def trigger_signal(views: ModelViews, probe: Probe) -> torch.Tensor:
    """(M,) the largest rise, over classes, of the share of predictions on trigger-like copies
    compared with the same copies' clean sources (zeros when the probe has no copy)."""
    if not len(probe.augmented_source):  # no trigger-like copy: nothing collapses
        return views.clean_logits.new_zeros(views.clean_logits.shape[0])
    on_copies = class_counts(views.augmented_logits.argmax(2), probe.num_classes)
    on_sources = class_counts(views.clean_logits.argmax(2)[:, probe.augmented_source], probe.num_classes)
    return ((on_copies - on_sources) / len(probe.augmented_source)).max(1).values


def geometry_signal(updates: torch.Tensor) -> torch.Tensor:
    reference = updates.median(dim=0).values
    return 1 - F.cosine_similarity(updates, reference.unsqueeze(0), dim=1)


def sybil_signal(updates: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(updates, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-1.0)
    return similarity.max(1).values


def score_clients(signals: list[str], views: ModelViews, global_view: ModelViews, probe: Probe,
                  updates: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw scores of each requested signal, one value per client.

    Args:
        signals: Names among ``kl, proto, trigger, geometry, sybil``.
        views: The M clients' views, in the order of ``updates``' rows.
        global_view: The global model's view (one model).
        probe: The probe the views were computed on.
        updates: (M, d) float32 flat parameter updates (CPU).

    Returns:
        ``{signal: (M,) float32 on the CPU}``.
    """
    compute = {
        "kl": lambda: kl_signal(views, probe),
        "proto": lambda: proto_signal(views, global_view, probe),
        "trigger": lambda: trigger_signal(views, probe),
        "geometry": lambda: geometry_signal(updates),
        "sybil": lambda: sybil_signal(updates),
    }
    return {name: compute[name]().cpu() for name in signals}


def combine(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over signals of each client's robust z-score, negative z counted as 0: being unusually
    unremarkable on one signal (a lone attacker has no sybil partner) must not cancel another."""
    return torch.stack([robust_z(s).clamp_min(0) for s in scores.values()]).mean(0)


def combine_low(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """``combine`` of the negated signals: how unusually *low* each client scores (the low side of
    the exclusion rule, ``clipfed-low-signals``)."""
    return combine({name: -values for name, values in scores.items()})


def running_scores(history: dict[int, float], partitions: list[int], combined: torch.Tensor,
                   weight: float) -> torch.Tensor:
    """Each client's running score, ``weight * combined + (1 - weight) * its previous running
    score``: an exponential moving average over the rounds the client was sampled in (FLDetector,
    Zhang et al. KDD 2022, judges a client by its consistency across rounds; this keeps only a mean).
    A client seen for the first time starts at its combined score. ``history`` is updated in place.

    A client that looked like an attacker when last sampled stays suspect even if this round's
    score is lower (a backdoor shows more in some rounds than in others), and an honest client's
    one noisy round is averaged with its calm ones. The price: an attacker that was sampled benign
    before enters its first attacking round at ``weight`` times its score (half at 0.5), never
    less, since combined scores are >= 0.

    Args:
        history: Partition id -> running score after the client's last round (updated here).
        partitions: The M clients' partition ids, in the order of ``combined``.
        combined: (M,) float32 combined scores of this round (``combine``).
        weight: In (0, 1]; 1 returns ``combined`` itself (this round alone).

    Returns:
        (M,) running scores, ``combined``'s dtype.
    """
    if weight == 1.0:
        running = combined
    else:
        running = torch.tensor([weight * float(c) + (1 - weight) * history[p] if p in history else float(c)
                                for p, c in zip(partitions, combined, strict=True)], dtype=combined.dtype)
    history.update(zip(partitions, running.tolist(), strict=True))
    return running


def flagged(running: torch.Tensor, threshold: float, low: torch.Tensor | None = None,
            low_threshold: float = float("inf")) -> set[int]:
    """The clients to exclude: at most (M - 1) // 2 (never a majority), the most suspicious first,
    among those whose running score is above ``threshold`` or, with ``low``, whose low score is
    above ``low_threshold`` (suspicion = the larger of each score over its threshold).

    Args:
        running: (M,) running scores (``running_scores``).
        threshold: ``clipfed-z-threshold``.
        low: (M,) running scores of the low side (``combine`` of the negated ``clipfed-low-signals``),
            or None (off: exactly the one-sided rule).
        low_threshold: ``clipfed-low-threshold``.

    Returns:
        Row indices into ``running``.
    """
    limit = (len(running) - 1) // 2
    if low is None:
        order = torch.argsort(running, descending=True)
        return {int(i) for i in order[:limit] if running[i] > threshold}
    over = torch.maximum(running / threshold, low / low_threshold)
    order = torch.argsort(over, descending=True)
    return {int(i) for i in order[:limit] if over[i] > 1}
