"""The main task's gradient at the received global model, on the attacker's own clean images: what
Neurotoxin's per-step mask (``clipfed/attacks/training/neurotoxin.py``) and F3BA's importance in an
attacker's first turn (``clipfed/attacks/data/f3ba.py``) are computed from.

Not a registered part: a helper module of ``neurotoxin`` and ``f3ba``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipfed.training import to_tensor

GRADIENT_BATCHES = 8  # batches of batch-size the gradient is summed over: a few, a cost of ~8 SGD steps


def clean_gradient(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int,
                   batches: int = GRADIENT_BATCHES) -> dict[str, torch.Tensor]:
    """Parameter name -> the gradient of the cross-entropy, summed over ``batches`` batches of
    ``batch_size`` clean images, at ``model``'s parameters (each on the model's device, in its shape).

    The images are a random subset of ``batches * batch_size`` of the uint8 (N, H, W, C) ``images``
    (all when fewer) with their int (N,) ``labels``, drawn from torch's global generator (which the
    ClientApp seeds per client and round, and the server's re-derivation per round). The backward
    passes run on a copy in training mode, BatchNorm normalising with batch statistics as local
    training does, so ``model`` (its running statistics too) is left as received.
    """
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    chosen = torch.randperm(len(labels))[: batches * batch_size].numpy()
    x = to_tensor(np.asarray(images)[chosen], device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)[chosen]).to(device)
    probe.zero_grad(set_to_none=True)
    for start in range(0, len(y), batch_size):
        F.cross_entropy(probe(x[start : start + batch_size]), y[start : start + batch_size]).backward()
    return {name: p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            for name, p in probe.named_parameters()}
