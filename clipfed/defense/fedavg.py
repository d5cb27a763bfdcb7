"""FedAvg (McMahan et al. 2017): the undefended baseline."""

from __future__ import annotations

from clipfed.defense.registry import DEFENSES
from clipfed.defense.strategy import DefenseStrategy


@DEFENSES.register("fedavg")
class FedAvgDefense(DefenseStrategy):
    """Example-weighted mean of every reply; excludes no one."""
