"""A model's state dict on the wire: what is trained, what is a statistic, and exact round trips.

A state dict holds trainable parameters and buffers (BatchNorm's ``running_mean``/``running_var``
and the 0-d int64 ``num_batches_tracked``). Two rules follow, and every defense and attack uses
them through this module:

- Update geometry (detection, clipping, sign flips, noise, boosting, masking) acts on the
  *parameters* only: a running variance is a statistic, not an update coordinate, and flipping or
  boosting it can make it negative.
- Every array keeps its shape and dtype end to end (ClientApp reply, validation, aggregation,
  checkpoint): ``np.ascontiguousarray`` turns a 0-d array into shape (1,), and flwr's
  ``aggregate_arrayrecords`` returns int64 buffers as float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from clipfed.models.registry import create_model


@lru_cache(maxsize=16)
def buffer_names(model: str, num_classes: int) -> frozenset[str]:
    """State-dict keys of a registered model's buffers (running statistics, step counters).

    Every other key of its state dict is a trainable parameter. Builds one model per
    (model, num_classes) and caches the answer; the build's random initialisation draws from a
    fork of torch's global generator, so whether the cache was warm never changes the random
    numbers a caller draws next (the ClientApp seeds the generator for the attack parts first).

    Args:
        model: A declared model name (``clipfed.models.list_models()``).
        num_classes: Its number of classes (buffers do not depend on it, the build does).

    Returns:
        The buffer keys, e.g. ``stem.1.running_var`` and ``stem.1.num_batches_tracked``; empty
        for a model without BatchNorm (``cnn``).

    Raises:
        KeyError: ``model`` is not declared.
    """
    with torch.random.fork_rng(devices=[]):
        return frozenset(name for name, _ in create_model(model, num_classes).named_buffers())


def to_array_record(state: Mapping[str, np.ndarray | torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord holding ``state`` with every shape and dtype kept (0-d arrays included).

    Args:
        state: Key -> numpy array or torch tensor (any device; tensors are detached and copied
            to the CPU), e.g. a ``state_dict()``.

    Returns:
        The record, in ``state``'s key order, each array C-contiguous with its original shape
        and dtype (a 0-d int64 ``num_batches_tracked`` stays 0-d int64).
    """
    out: dict[str, Array] = {}
    for key, value in state.items():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        out[key] = Array(np.require(array, requirements="C"))  # keeps ndim 0, unlike ascontiguousarray
    return ArrayRecord(out)


def conform(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` with each entry cast back to ``reference``'s shape and dtype.

    Aggregation rules compute in floating point; an integer buffer (a step count) is rounded to
    the nearest integer before the cast.

    Args:
        arrays: An aggregate, e.g. flwr's ``aggregate_arrayrecords`` output (float64 where the
            global model had int64, possibly flattened).
        reference: The global model the round started from; its key order is kept.

    Returns:
        A new ArrayRecord with ``reference``'s keys, shapes and dtypes.

    Raises:
        ValueError: The key sets differ, or an entry's number of values differs from the
            reference's.
    """
    if set(arrays) != set(reference):
        raise ValueError(f"aggregate keys differ from the global model's: {sorted(set(arrays) ^ set(reference))[:3]}")
    out: dict[str, np.ndarray] = {}
    for key, expected in reference.items():
        array = np.asarray(arrays[key].numpy())
        dtype = np.dtype(expected.dtype)
        if array.size != int(np.prod(expected.shape, dtype=np.int64)):
            raise ValueError(f"aggregate {key!r} has {array.size} values, expected shape {tuple(expected.shape)}")
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
            array = np.rint(array)
        out[key] = array.reshape(tuple(expected.shape)).astype(dtype, copy=False)
    return to_array_record(out)
