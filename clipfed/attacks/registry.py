"""The attack registry: ``create_attack(cfg)`` builds the attack that ``cfg.attack`` names.

The catalogue below is where an attack is declared (name, module, description); its module
registers the factory with ``@ATTACKS.register(name)`` and is imported on first use, so listing
attacks imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.attacks.base import Attack
    from clipfed.config import RunConfig

ATTACKS: Registry[Callable[[RunConfig], Attack]] = Registry("attack", {
    "badnets": ("clipfed.attacks.badnets", "BadNets patch trigger (patch-size, patch-position, patch-pattern)"),
    "blended": ("clipfed.attacks.blended", "Blended full-image trigger (blend-alpha, blend-pattern)"),
    "dba": ("clipfed.attacks.dba", "distributed backdoor: each attacker stamps one part of the patch (dba-parts)"),
    "frequency": ("clipfed.attacks.frequency", "imperceptible mid/high-DCT-band trigger (freq-psnr, freq-band-*)"),
    "labelflip": ("clipfed.attacks.labelflip", "label flipping to the target, no trigger (flip-source)"),
    "neurotoxin": ("clipfed.attacks.model_attacks",
                   "BadNets update restricted to rarely-updated coordinates (neurotoxin-keep)"),
    "scaling": ("clipfed.attacks.model_attacks", "model replacement: BadNets update boosted by boost-factor"),
})


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def create_attack(cfg: RunConfig) -> Attack | None:
    """The configured attack, or None for ``attack=none``."""
    return None if cfg.attack == "none" else ATTACKS.get(cfg.attack)(cfg)
