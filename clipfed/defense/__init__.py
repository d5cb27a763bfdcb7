"""Aggregation defenses, one per module, selectable by name (``defense=NAME``).

Every defense is a Flower strategy subclassing ``flwr.serverapp.strategy.FedAvg`` through
``DefenseStrategy``, which adds reproducible sampling by partition id and the per-round report of
which clients were kept and excluded (so detection is scored the same way for every defense).
"""

from __future__ import annotations

from clipfed.defense import bulyan as _bulyan  # noqa: F401
from clipfed.defense import clipfed as _clipfed  # noqa: F401  ("clipfed", "teacher-only")
from clipfed.defense import clipping as _clipping  # noqa: F401  ("normclip", "weakdp", "crfl")
from clipfed.defense import fedavg as _fedavg  # noqa: F401
from clipfed.defense import flame as _flame  # noqa: F401
from clipfed.defense import fltrust as _fltrust  # noqa: F401
from clipfed.defense import foolsgold as _foolsgold  # noqa: F401
from clipfed.defense import krum as _krum  # noqa: F401  ("krum", "multikrum")
from clipfed.defense import median as _median  # noqa: F401
from clipfed.defense import rlr as _rlr  # noqa: F401
from clipfed.defense import trimmedmean as _trimmedmean  # noqa: F401
from clipfed.defense.registry import DEFENSES, create_defense, list_defenses

__all__ = ["DEFENSES", "create_defense", "list_defenses"]
