"""Backdoor attacks, selectable by name (``attack=NAME``) and listable with ``list_attacks()``.

Each attack is declared in ``clipfed.attacks.registry``'s catalogue and its module is imported on
first use, so importing this package (and listing attacks) loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.attacks.registry import ATTACKS, create_attack, list_attacks

if TYPE_CHECKING:
    from clipfed.attacks.base import Attack, PoisonedData

__all__ = ["ATTACKS", "Attack", "PoisonedData", "create_attack", "list_attacks"]


def __getattr__(name: str) -> Any:
    """``Attack`` and ``PoisonedData`` load with ``clipfed.attacks.base`` on first use."""
    if name in ("Attack", "PoisonedData"):
        from clipfed.attacks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
