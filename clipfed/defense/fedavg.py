"""FedAvg (McMahan et al. 2017): the undefended baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.defense.base import DefenseStrategy
from clipfed.defense.registry import DEFENSES

if TYPE_CHECKING:
    from clipfed.config import RunConfig


class FedAvgDefense(DefenseStrategy):
    """Example-weighted mean of every reply; excludes no one."""


@DEFENSES.register("fedavg", "FedAvg, no defense (example-weighted mean of all updates)")
def fedavg(cfg: RunConfig, **context: Any) -> DefenseStrategy:
    return FedAvgDefense(cfg, **context)
