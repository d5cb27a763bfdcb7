"""Classifier architectures, created by name through a registry (open_clip/timm style).

Each model is declared in ``clipfed.models.registry``'s catalogue and its module is imported on
first use, so importing this package (and listing models) loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.models.registry import MODELS, create_model, list_models

if TYPE_CHECKING:
    from clipfed.models.base import ClassifierNet

__all__ = ["MODELS", "ClassifierNet", "create_model", "list_models"]


def __getattr__(name: str) -> Any:
    """``ClassifierNet`` loads with ``clipfed.models.base`` (torch) on first use."""
    if name == "ClassifierNet":
        from clipfed.models.base import ClassifierNet

        return ClassifierNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
