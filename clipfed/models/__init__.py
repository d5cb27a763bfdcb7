"""Classifier architectures, created by name through a registry (open_clip/timm style)."""

from __future__ import annotations

from clipfed.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from clipfed.models import resnet as _resnet  # noqa: F401  (registers "resnet20", "resnet18")
from clipfed.models.base import ClassifierNet
from clipfed.models.registry import MODELS, create_model, list_models

__all__ = ["MODELS", "ClassifierNet", "create_model", "list_models"]
