"""Model updates as flat float vectors, for geometry, clipping and robust aggregation.

Which keys are update coordinates (the trainable parameters, not BatchNorm statistics) is
decided by ``DefenseStrategy.parameter_keys`` (``clipfed.models.state``)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from clipfed.models.state import to_array_record


def flatten(arrays: ArrayRecord, keys: list[str]) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(arrays[k].numpy(), dtype=np.float32)).reshape(-1) for k in keys])


def unflatten(vector: torch.Tensor, like: ArrayRecord, keys: list[str]) -> ArrayRecord:
    """``like`` with its ``keys`` entries replaced by slices of ``vector`` (others copied)."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    replaced = set(keys)
    for key, value in like.items():
        array = value.numpy()
        if key in replaced:
            size = array.size
            array = vector[offset : offset + size].reshape(array.shape).numpy().astype(array.dtype)
            offset += size
        out[key] = array
    return to_array_record(out)


def robust_z(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """(x - median) / (1.4826 * MAD) along ``dim``; a zero MAD is treated as a tiny spread."""
    median = values.median(dim=dim, keepdim=True).values
    mad = (values - median).abs().median(dim=dim, keepdim=True).values
    return (values - median) / (1.4826 * mad).clamp_min(1e-6 * (1 + median.abs()))


def clip_to_norm(updates: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """Scale each row down to at most ``bound`` in L2 norm (rows below it are untouched)."""
    norms = updates.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return updates * (torch.as_tensor(bound) / norms).clamp(max=1.0)
