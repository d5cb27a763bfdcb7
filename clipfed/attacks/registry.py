"""The attack registry: ``create_attack(cfg)`` builds the attack that ``cfg.attack`` names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.attacks.base import Attack
    from clipfed.config import RunConfig

ATTACKS: Registry[Callable[[RunConfig], Attack]] = Registry("attack")


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def create_attack(cfg: RunConfig) -> Attack | None:
    """The configured attack, or None for ``attack=none``."""
    return None if cfg.attack == "none" else ATTACKS.get(cfg.attack)(cfg)
