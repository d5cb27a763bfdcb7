"""The model registry: ``create_model(name, num_classes)``.

The catalogue below is where a model is declared (name, module, description); its module registers
the factory with ``@MODELS.register(name)`` and is imported on first use, so listing models
imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.models.base import ClassifierNet

ModelFactory = Callable[[int], "ClassifierNet"]
MODELS: Registry[ModelFactory] = Registry("model", {
    "cnn": ("clipfed.models.cnn", "small CNN, ~0.49M parameters, for CPU experiments"),
    "resnet18": ("clipfed.models.resnet", "ResNet-18, CIFAR variant (3x3 stem, no max-pool), 11M; for a GPU"),
    "resnet20": ("clipfed.models.resnet", "ResNet-20 for CIFAR (He et al. 2016), 0.27M parameters"),
})


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def create_model(name: str, num_classes: int) -> ClassifierNet:
    return MODELS.get(name)(num_classes)
