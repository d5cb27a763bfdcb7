"""The defense registry: ``create_defense(cfg, ...)`` builds the strategy ``cfg.defense`` names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.config import RunConfig
    from clipfed.defense.base import DefenseStrategy

DEFENSES: Registry[type[DefenseStrategy]] = Registry("defense")


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


def create_defense(cfg: RunConfig, **context: Any) -> DefenseStrategy:
    """The strategy for ``cfg.defense``; ``context`` carries server-side helpers (sampler, reporter,
    and the server dataset and teacher for defenses whose ``needs_server_data`` is true)."""
    return DEFENSES.get(cfg.defense)(cfg, **context)
