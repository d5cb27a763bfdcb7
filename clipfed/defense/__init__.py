"""Aggregation defenses, one per module, selectable by name (``defense=NAME``).

Every defense is a Flower strategy subclassing ``flwr.serverapp.strategy.FedAvg`` through
``DefenseStrategy``, which adds reproducible sampling by partition id and the per-round report of
which clients were kept and excluded (so detection is scored the same way for every defense).
"""

from __future__ import annotations

from clipfed.defense.registry import DEFENSES, create_defense, list_defenses

from clipfed.defense import clipfed as _clipfed  # noqa: F401  (registers "clipfed", "teacher-only")
from clipfed.defense import fedavg as _fedavg  # noqa: F401  (registers "fedavg")

__all__ = ["DEFENSES", "create_defense", "list_defenses"]
