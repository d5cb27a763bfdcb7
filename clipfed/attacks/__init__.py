"""Backdoor attacks, selectable by name (``attack=NAME``) and listable with ``list_attacks()``."""

from __future__ import annotations

from clipfed.attacks import badnets as _badnets  # noqa: F401  (registers "badnets")
from clipfed.attacks import blended as _blended  # noqa: F401  (registers "blended")
from clipfed.attacks import dba as _dba  # noqa: F401  (registers "dba")
from clipfed.attacks import frequency as _frequency  # noqa: F401  (registers "frequency")
from clipfed.attacks import labelflip as _labelflip  # noqa: F401  (registers "labelflip")
from clipfed.attacks import model_attacks as _model_attacks  # noqa: F401  ("scaling", "neurotoxin")
from clipfed.attacks.base import Attack, PoisonedData
from clipfed.attacks.registry import ATTACKS, create_attack, list_attacks

__all__ = ["ATTACKS", "Attack", "PoisonedData", "create_attack", "list_attacks"]
