"""The model registry: ``create_model(name, num_classes)``."""

from __future__ import annotations

from collections.abc import Callable

from clipfed.models.base import ClassifierNet
from clipfed.registry import Registry

ModelFactory = Callable[[int], ClassifierNet]
MODELS: Registry[ModelFactory] = Registry("model")


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def create_model(name: str, num_classes: int) -> ClassifierNet:
    return MODELS.get(name)(num_classes)
