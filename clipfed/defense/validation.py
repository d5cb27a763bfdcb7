"""Reply validation before any defense sees an update: malicious clients also send garbage.

``reply_problem`` returns why a reply must be rejected (or None): a client error, missing
records, array keys/shapes/dtypes that differ from the global model's, non-finite values, an
absurd update norm (over the trainable parameters), a negative running variance, or malformed
metrics. The round goes on with the replies that pass.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
from flwr.app import ArrayRecord, Message

REQUIRED_METRICS = ("num-examples", "train-loss", "partition-id")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metrics_problem(msg: Message, num_clients: int) -> str | None:
    metrics = msg.content.metric_records.get("metrics")
    if metrics is None:
        return "no 'metrics' MetricRecord"
    values: list[float] = []
    for key in REQUIRED_METRICS:
        if key not in metrics:
            return f"metric {key!r} missing"
        value = _number(metrics[key])
        if value is None:
            return f"metric {key!r} is not a number: {metrics[key]!r}"
        values.append(value)
    examples, loss, pid = values
    if not examples > 0 or not math.isfinite(examples):
        return f"num-examples={examples} is not a positive count"
    if not math.isfinite(loss):
        return f"train-loss={loss} is not finite"
    return parse_partition_id(pid, num_clients)[1]


def parse_partition_id(value: object, num_clients: int) -> tuple[int | None, str | None]:
    """(the partition id ``value`` claims, None if it is no integer; why it is not one of a
    federation of ``num_clients``, or None). Shared by reply validation and the sampler's
    partition QUERY, so both refuse the same claims."""
    number = _number(value)
    if number is None or number != int(number):
        return None, f"partition-id={value!r} is not an integer"
    pid = int(number)
    if not 0 <= pid < num_clients:
        return pid, (f"partition-id={pid} is outside 0..{num_clients - 1} (num-clients={num_clients}); "
                     "fix its node config or num-clients")
    return pid, None


def arrays_problem(arrays: ArrayRecord, reference: ArrayRecord | None, max_update_norm: float,
                   parameter_keys: Collection[str] | None = None) -> str | None:
    """Why ``arrays`` cannot be aggregated against the global ``reference``, or None.

    The update norm counts ``parameter_keys`` only (all floating arrays when None): running
    statistics are not update coordinates.
    """
    if reference is not None:
        missing = sorted(set(reference) - set(arrays))
        extra = sorted(set(arrays) - set(reference))
        if missing or extra:
            return f"array keys differ from the global model's (missing {missing[:3]}, extra {extra[:3]})"
    squared = 0.0
    for key, value in arrays.items():
        array = value.numpy()
        if reference is not None:
            expected = reference[key]
            if tuple(array.shape) != tuple(expected.shape):
                return f"array {key!r} has shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
            if array.dtype != np.dtype(expected.dtype):
                return f"array {key!r} has dtype {array.dtype}, expected {expected.dtype}"
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                return f"array {key!r} holds NaN or Inf"
            if key.endswith("running_var") and (array < 0).any():
                return f"array {key!r} holds a negative variance"
            if reference is not None and (parameter_keys is None or key in parameter_keys):
                squared += float(np.sum((array.astype(np.float64) - reference[key].numpy()) ** 2))
    if reference is not None and math.sqrt(squared) > max_update_norm:
        return f"update norm {math.sqrt(squared):.3g} exceeds max-update-norm={max_update_norm:g}"
    return None


def reply_problem(msg: Message, reference: ArrayRecord | None, num_clients: int,
                  max_update_norm: float, parameter_keys: Collection[str] | None = None) -> str | None:
    """Why ``msg`` cannot be aggregated, or None."""
    if msg.has_error():
        return f"client error: {msg.error.reason}"
    arrays = msg.content.array_records.get("arrays")
    if arrays is None or len(msg.content.array_records) != 1:
        return "expected exactly one ArrayRecord named 'arrays'"
    return metrics_problem(msg, num_clients) or arrays_problem(arrays, reference, max_update_norm, parameter_keys)
