"""Backdoor attacks, selectable by name (``attack=NAME``) and listable with ``list_attacks()``."""

from __future__ import annotations

from clipfed.attacks.base import Attack, PoisonedData
from clipfed.attacks.registry import ATTACKS, create_attack, list_attacks

from clipfed.attacks import badnets as _badnets  # noqa: F401  (registers "badnets")
from clipfed.attacks import blended as _blended  # noqa: F401  (registers "blended")

__all__ = ["ATTACKS", "Attack", "PoisonedData", "create_attack", "list_attacks"]
