"""Stage 4: the clean set's spectrum, and trigger-like augmentations that keep clean labels.

The augmentation itself lives in ``clipfed.trigger_like`` (shared with the adaptive attacker that
rebuilds CLIP-Fed's probe from its own shard, which may not import this package); this stage
applies it with the recipe's ``AugmentConfig``. Aligning the global model with the teacher on
these copies (labelled with their clean class) teaches it to ignore such patterns.
"""

from __future__ import annotations

import numpy as np

from clipfed.data_synth.config import AugmentConfig
from clipfed.trigger_like import AUGMENTATIONS, MIX_KINDS, Spectrum, amplitude_spectrum, trigger_like_copies

__all__ = ["AUGMENTATIONS", "MIX_KINDS", "Spectrum", "amplitude_spectrum", "augment"]


def augment(images: np.ndarray, cfg: AugmentConfig, spectrum: Spectrum,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cfg.copies`` trigger-like copies of each image: (images, index of the source, kind code);
    none when ``cfg.enabled`` is false (``trigger_like.trigger_like_copies`` says the rest)."""
    if not cfg.enabled:
        return images[:0], np.empty(0, np.int64), np.empty(0, np.int64)
    return trigger_like_copies(images, cfg.recipe(), spectrum, rng)
