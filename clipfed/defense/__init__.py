"""Aggregation defenses, one per module, selectable by name (``defense=NAME``).

Every defense is a Flower strategy subclassing ``flwr.serverapp.strategy.FedAvg`` through
``DefenseStrategy``, which adds reproducible sampling by partition id and the per-round report of
which clients were kept and excluded (so detection is scored the same way for every defense).
Each is declared in ``clipfed.defense.registry``'s catalogue and its module is imported on first
use, so importing this package (and listing defenses) loads no torch, scikit-learn or flwr.
"""

from __future__ import annotations

from clipfed.defense.registry import DEFENSES, create_defense, list_defenses

__all__ = ["DEFENSES", "create_defense", "list_defenses"]
