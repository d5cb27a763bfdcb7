"""``clipfed-aware``: an adaptive attacker who knows CLIP-Fed's public recipe (ours; no paper).

CLIP-Fed scores each update on a probe of the server dataset: class-balanced clean images and
their trigger-like copies (``clipfed.defense.scoring``). Its default signals are ``proto`` (how far
the client's class prototypes, the mean penultimate features per class on the copies, moved from
the global model's) and ``sybil``; ``kl`` (divergence from the teacher on the clean images) and
``trigger`` (collapse onto one class on the copies) are available; kept updates are clipped to
their median norm. Everything about that recipe is public: the run config
(``clipfed-probe-size``), the trigger-like augmentation (``clipfed.trigger_like``, the same code
and default recipe the server's synthesis uses), the signals. The server's images are not.

So this attacker, each round:

1. **Builds its own probe from its own clean shard only** (``build_own_probe``): the server's
   recipe applied to its images, ``clipfed-probe-size // num_classes`` clean images per class (as
   many as it holds) and ``DEFAULT_RECIPE.copies`` trigger-like copies of each, the copies' ``freq``
   energy scaled to its shard's own spectrum (the server scales to its clean set's). No server
   data, no teacher: the client side cannot import them (the import contracts), and it does not
   need to.
2. **Records the received global model's view of that probe** (no grad, eval mode, as the server
   scores): log-probabilities on the clean images and the copies, and class prototypes on the
   copies. The global model stands in for the teacher of the ``kl`` signal: CLIP-Fed distils it
   towards the teacher every round.
3. **Trains BadNets with an evasion term** (``extra_loss``, weight ``aware-lambda``): on a probe
   batch drawn each step (``batch-size`` clean images and as many copies, in eval mode like the
   server's scoring) ``KL(global || model)`` over the clean images and copies plus the mean over
   the batch's classes of ``1 - cos(model's class mean features on the copies, global prototype)``,
   which is what ``proto`` measures (per class, against the global model's prototypes).
4. **Keeps its update norm within a benign one**: before training it trains an honest copy of the
   global model on its clean shard with the benign schedule (``local-epochs``, ``local-steps``,
   ``lr``: what it would send if honest) and takes that update's L2 norm; after training its
   update is scaled down onto that norm when larger (``after_training``; never up: a smaller norm
   is not suspicious, and CLIP-Fed counts negative z-scores as 0). This costs one extra benign
   local training; the cheaper estimate, the last global step's norm, underestimates a single
   client's norm (averaging shrinks it) by a factor that depends on the round's clients.

``aware-lambda`` 1.0: the evasion terms weigh as much as the task loss, the same weight CLIP-Fed's
own post-alignment gives its KL term (``clipfed-lambda-kl`` 1.0); 0 is BadNets with the norm cap.
The trigger-like ``patch`` copies resemble a BadNets patch, so the term pulls against the backdoor
itself: larger values trade ASR for stealth.

Simplified / not evaded: ``sybil`` and ``geometry`` compare updates with each other, which a
client cannot see (attackers with different shards already differ in direction; nothing here
decorrelates them); the probe batch per step is a sample of the probe, so the prototype term uses
per-batch class means (unbiased, noisier than the server's whole-probe means).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed.attacks.base import AttackContext, LocalSchedule, StepHooks
from clipfed.attacks.registry import TRAINING_PARTS
from clipfed.attacks.training.pgd import l2_distance, project_l2
from clipfed.attacks.training.sgd import AttackerSGD
from clipfed.config import RunConfig
from clipfed.models import ClassifierNet
from clipfed.streams import Stream, stream_rng
from clipfed.training import to_tensor, train_local
from clipfed.trigger_like import DEFAULT_RECIPE, amplitude_spectrum, probe_rows, trigger_like_copies

FORWARD_CHUNK = 500  # probe images per no-grad forward pass in ``build_own_probe``


@dataclass(frozen=True)
class OwnProbe:
    """The attacker's probe and the global model's view of it, on the training device.

    Attributes:
        clean_x: normalised float32 (n, 3, H, W), clean images of the attacker's shard.
        copies_x: normalised float32 (a, 3, H, W), trigger-like copies of them.
        copies_y: int64 (a,), each copy's clean label.
        clean_log_probs: float32 (n, C), the global model's log-probabilities on ``clean_x``.
        copies_log_probs: float32 (a, C), the same on ``copies_x``.
        prototypes: float32 (C, D), the global model's mean penultimate features per class on the
            copies (zeros for a class with no copy).
    """

    clean_x: torch.Tensor
    copies_x: torch.Tensor
    copies_y: torch.Tensor
    clean_log_probs: torch.Tensor
    copies_log_probs: torch.Tensor
    prototypes: torch.Tensor


def _classifier(model: nn.Module) -> ClassifierNet:
    if not isinstance(model, ClassifierNet):
        raise TypeError(f"clipfed-aware needs features() and head (a ClassifierNet), got {type(model).__name__}")
    return model


@torch.no_grad()
def _features_and_log_probs(model: ClassifierNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode (N, D) features and (N, C) log-probabilities (float32) of normalised ``x``."""
    features, log_probs = [], []
    for start in range(0, len(x), FORWARD_CHUNK):
        f = model.features(x[start : start + FORWARD_CHUNK]).float()
        features.append(f)
        log_probs.append(F.log_softmax(model.head(f), dim=1))
    return torch.cat(features), torch.cat(log_probs)


def build_own_probe(model: nn.Module, images: np.ndarray, labels: np.ndarray, size: int, num_classes: int,
                    rng: np.random.Generator) -> OwnProbe:
    """CLIP-Fed's probe recipe applied to the attacker's own clean shard, with the global view.

    Args:
        model: the received global model (a ClassifierNet, on the training device); left as it
            was (its train/eval mode restored, no parameter touched).
        images: uint8 (N, H, W, C), the attacker's clean shard; labels: int (N,).
        size: about how many clean images (``clipfed-probe-size``: ``size // num_classes`` per
            class, at least one, fewer where the shard has fewer).
        num_classes: C.
        rng: chooses the images and draws the copies.
    Returns:
        The probe, its tensors on the model's device.
    """
    net = _classifier(model)
    device = next(net.parameters()).device
    chosen = probe_rows(labels, size, num_classes, rng)
    copies, sources, _ = trigger_like_copies(images[chosen], DEFAULT_RECIPE, amplitude_spectrum(images), rng)
    clean_x, copies_x = to_tensor(images[chosen], device), to_tensor(copies, device)
    copies_y = torch.from_numpy(np.asarray(labels, dtype=np.int64)[chosen][sources]).to(device)
    was_training = net.training
    net.eval()
    _, clean_log_probs = _features_and_log_probs(net, clean_x)
    copy_features, copies_log_probs = _features_and_log_probs(net, copies_x)
    net.train(was_training)
    prototypes = torch.zeros(num_classes, net.feature_dim, device=device).index_add_(0, copies_y, copy_features)
    prototypes /= torch.bincount(copies_y, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return OwnProbe(clean_x, copies_x, copies_y, clean_log_probs, copies_log_probs, prototypes)


def evasion_loss(model: ClassifierNet, probe: OwnProbe, clean: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
    """``KL(global || model)`` on probe rows ``clean`` and ``copies`` (int64 indices into the
    probe's clean images and copies) plus the mean over the copies' classes of ``1 - cos`` between
    the model's class mean features and the global prototypes; a differentiable scalar. Runs
    ``model`` in eval mode (as CLIP-Fed scores) and restores its mode."""
    was_training = model.training
    model.eval()
    features = model.features(torch.cat([probe.clean_x[clean], probe.copies_x[copies]]))
    log_probs = F.log_softmax(model.head(features).float(), dim=1)
    model.train(was_training)
    target = torch.cat([probe.clean_log_probs[clean], probe.copies_log_probs[copies]])
    kl = F.kl_div(log_probs, target, reduction="batchmean", log_target=True)
    copy_features = features[len(clean):].float()  # (B, D)
    y = probe.copies_y[copies]
    num_classes = probe.prototypes.shape[0]
    sums = copy_features.new_zeros(num_classes, copy_features.shape[1]).index_add(0, y, copy_features)
    counts = torch.bincount(y, minlength=num_classes)
    present = counts > 0
    means = sums[present] / counts[present].unsqueeze(1)
    shift = 1 - F.cosine_similarity(means, probe.prototypes[present], dim=1)
    return kl + shift.mean()


class ClipFedAware(AttackerSGD):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.weight = cfg.aware_lambda
        self.probe: OwnProbe | None = None
        self.benign_norm = 0.0  # L2 norm of the honest update (parameter units), set by ``prepare``
        self.batch_generator = torch.Generator()  # draws each step's probe rows (reseeded by ``prepare``)

    def prepare(self, model: nn.Module, ctx: AttackContext) -> None:
        """Build the probe from the clean shard and measure the honest update's norm."""
        if ctx.clean_images is None or ctx.clean_labels is None:
            raise ValueError("clipfed-aware needs the attacker's clean shard (AttackContext.clean_images)")
        cfg = self.cfg
        rng = stream_rng(cfg.seed, Stream.AWARE_PROBE, ctx.server_round, ctx.malicious_rank)
        self.probe = build_own_probe(model, ctx.clean_images, ctx.clean_labels, cfg.clipfed_probe_size,
                                     cfg.num_classes, rng)
        self.batch_generator.manual_seed(int(rng.integers(2**62)))
        self.benign_norm = self.honest_update_norm(model, ctx, int(rng.integers(2**62)))

    def honest_update_norm(self, model: nn.Module, ctx: AttackContext, seed: int) -> float:
        """The L2 norm (parameter units) of the update an honest copy of ``model`` makes on the
        clean shard with the benign schedule; ``model`` itself is not trained."""
        assert ctx.clean_images is not None and ctx.clean_labels is not None  # checked by ``prepare``
        cfg, benign = self.cfg, LocalSchedule.benign(self.cfg)
        honest = copy.deepcopy(model)
        device = next(model.parameters()).device
        train_local(honest, ctx.clean_images, ctx.clean_labels, epochs=benign.epochs, batch_size=cfg.batch_size,
                    lr=benign.lr, momentum=benign.momentum, weight_decay=benign.weight_decay,
                    generator=torch.Generator().manual_seed(seed), max_steps=benign.max_steps, device=device,
                    amp=cfg.amp, augment=cfg.augment)
        with torch.no_grad():
            return l2_distance(*ctx.anchored(honest))

    def hooks(self, model: nn.Module, ctx: AttackContext) -> StepHooks:
        assert self.probe is not None, "prepare() builds the probe before hooks()"
        probe, weight, generator, batch = self.probe, self.weight, self.batch_generator, self.cfg.batch_size
        net = _classifier(model)
        params, centre = ctx.anchored(net)

        def extra_loss(_: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            clean = torch.randint(len(probe.clean_x), (batch,), generator=generator).to(x.device)
            copies = torch.randint(len(probe.copies_x), (batch,), generator=generator).to(x.device)
            return weight * evasion_loss(net, probe, clean, copies)

        def after_training(_: nn.Module) -> None:
            project_l2(params, centre, self.benign_norm)

        return StepHooks(extra_loss=extra_loss if weight > 0 else None, after_training=after_training)


@TRAINING_PARTS.register("clipfed-aware")
def clipfed_aware(cfg: RunConfig) -> ClipFedAware:
    return ClipFedAware(cfg)
