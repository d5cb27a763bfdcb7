"""The model registry: ``create_model(name, num_classes)``.

The catalogue below is where a model is declared (name, module, description); its module registers
the factory with ``@MODELS.register(name)`` and is imported on first use, so listing models
imports no torch.

A factory takes the number of classes and returns a fresh, randomly initialised ``ClassifierNet``
(``clipfed.models.base``) that maps CIFAR-normalised float32 images (N, 3, 32, 32) to logits
(N, num_classes). ``tests/test_every_model.py`` trains every declared model through the ClientApp
and every defense. Sources: ResNet-20 and the ResNet-18 CIFAR variant follow He et al., "Deep
Residual Learning for Image Recognition", CVPR 2016; ``cnn`` is this project's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.models.base import ClassifierNet

# num_classes -> a new ClassifierNet (random init; seed torch beforehand for reproducible weights)
ModelFactory = Callable[[int], "ClassifierNet"]
MODELS: Registry[ModelFactory] = Registry("model", {
    "cnn": ("clipfed.models.cnn", "small CNN, ~0.49M parameters, for CPU experiments"),
    "resnet18": ("clipfed.models.resnet", "ResNet-18, CIFAR variant (3x3 stem, no max-pool), 11M; for a GPU"),
    "resnet20": ("clipfed.models.resnet", "ResNet-20 for CIFAR (He et al. 2016), 0.27M parameters"),
})


def list_models(pattern: str = "*") -> list[str]:
    """Declared model names matching ``pattern`` (an ``fnmatch`` glob), sorted; imports no torch."""
    return MODELS.names(pattern)


def create_model(name: str, num_classes: int) -> ClassifierNet:
    """A new, randomly initialised model (in training mode, on the CPU).

    Args:
        name: A declared model name (``list_models()``), e.g. ``"resnet20"``.
        num_classes: Width of the linear head: the logits are (N, num_classes).

    Returns:
        The ``ClassifierNet``; its weights come from torch's global RNG.

    Raises:
        KeyError: ``name`` is not declared.
    """
    return MODELS.get(name)(num_classes)
