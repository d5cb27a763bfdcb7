"""Where tensors live: the ``device`` key resolved to a ``torch.device``, and mixed precision.

``device`` is ``auto`` (CUDA when visible, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a
SuperNode's node config may set its own (each machine knows its GPU). ``amp`` turns on bf16
autocast and channels-last memory on CUDA; on the CPU it changes nothing, so CPU results stay
bit-identical whatever ``amp`` says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` for a ``device`` value.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``RunConfig`` has checked the form).
    Returns:
        ``cuda`` (the current CUDA device) for ``auto`` when CUDA is visible, else ``cpu``.
    Raises:
        DeviceUnavailable: ``cuda``/``cuda:N`` where CUDA is not visible or N is no device.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device={spec!r} but this machine has no visible CUDA device; "
                                    "use device='auto' or 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailable(f"device={spec!r} but this machine has {count} CUDA device(s): "
                                    f"allowed: cuda:0..cuda:{count - 1}")
    return device


def describe(device: torch.device) -> str:
    """``cpu`` or the GPU's name (``cuda:0 NVIDIA H200``), for run records and benchmark tables."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def amp_active(device: torch.device, amp: bool) -> bool:
    """Whether bf16 autocast and channels-last apply: ``amp`` on a CUDA device only."""
    return amp and device.type == "cuda"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the caller's count.

    The count is process-wide and decides the order of float sums (so the last bits of a
    result): a library call that set it and left it would change what later code in the same
    process computes (a ServerApp after building its server dataset, one test after another)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def autocast(device: torch.device, amp: bool) -> Iterator[None]:
    """bf16 autocast on CUDA when ``amp``; nothing otherwise (the CPU path is untouched)."""
    if amp_active(device, amp):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def place(model: nn.Module, device: torch.device, amp: bool = False) -> nn.Module:
    """``model`` moved to ``device`` (channels-last on CUDA with ``amp``); returns it."""
    model.to(device)
    if amp_active(device, amp):
        model.to(memory_format=torch.channels_last)
    return model
