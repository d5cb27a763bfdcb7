"""Trigger-like copies of clean images, shared by both sides: the server's synthesis (stage 4 of
``clipfed.data_synth``) and an adaptive attacker that rebuilds CLIP-Fed's probe from its own shard
(``clipfed.attacks.training.clipfed_aware``). Pure numpy/scipy, so neither side imports the other.

Backdoor triggers concentrate energy in mid/high spatial frequencies (patches have sharp edges,
blended noise is broadband). From the clean images' mean DCT amplitude we build perturbations of
three families: local patches, blended patterns, and energy injected into a chosen DCT band
scaled to the clean set's own amplitude there. Every copy keeps its clean label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.fft import dctn, idctn

from clipfed.dct import band_mask

MixKind = Literal["patch", "blend", "freq"]  # the trigger-like augmentations, in sampling order
AUGMENTATIONS = ("clean", "patch", "blend", "freq")  # the kind codes an augmented copy records
MIX_KINDS: tuple[MixKind, ...] = ("patch", "blend", "freq")


def probe_rows(labels: np.ndarray, size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """CLIP-Fed's probe choice, shared by the server and the attacker who imitates it: about
    ``size`` images, ``size // num_classes`` (at least one) drawn per class, fewer where a class has
    fewer, none of an absent class.

    Args:
        labels: int (N,), the labels of the candidate images.
        size: about how many to choose; num_classes: C.
        rng: draws the images, class by class.
    Returns:
        Sorted int (n,) positions into ``labels``.
    """
    per_class = max(1, size // num_classes)
    return np.sort(np.concatenate([
        rng.choice(rows, size=min(per_class, len(rows)), replace=False)
        for c in range(num_classes) if len(rows := np.flatnonzero(labels == c))
    ]))


@dataclass(frozen=True)
class TriggerLikeRecipe:
    """How trigger-like copies are made (the defaults are the server's public recipe,
    ``data_synth.config.AugmentConfig``'s defaults).

    Attributes:
        copies: copies per clean image.
        mix: relative weight of each kind (``patch``, ``blend``, ``freq``); a kind with weight 0,
            or absent, is never drawn.
        patch_size: (low, high) side of a random patch, px (inclusive).
        blend_alpha: (low, high) weight of a blended noise or stripe pattern.
        freq_band: (low, high) normalised DCT radius the ``freq`` copies add energy to.
        freq_strength: the added energy's standard deviation, in multiples of the clean set's mean
            DCT amplitude at each coefficient of the band.
    """

    copies: int = 2
    mix: Mapping[MixKind, float] = field(default_factory=lambda: dict.fromkeys(MIX_KINDS, 1.0))
    patch_size: tuple[int, int] = (2, 8)
    blend_alpha: tuple[float, float] = (0.05, 0.3)
    freq_band: tuple[float, float] = (0.35, 1.0)
    freq_strength: float = 3.0


DEFAULT_RECIPE = TriggerLikeRecipe()


@dataclass(frozen=True)
class Spectrum:
    """Mean amplitude spectra (C, H, W) of a clean uint8 image set (pixels scaled to [0, 1])."""

    dct: np.ndarray
    fft: np.ndarray


def amplitude_spectrum(images: np.ndarray) -> Spectrum:
    """The mean orthonormal DCT and (centred) FFT amplitudes of uint8 (N, H, W, C) ``images``."""
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    dct = np.abs(dctn(x, axes=(2, 3), norm="ortho")).mean(0)
    fft = np.fft.fftshift(np.abs(np.fft.fft2(x, norm="ortho")).mean(0), axes=(1, 2))
    return Spectrum(dct.astype(np.float32), fft.astype(np.float32))


def _patch(image: np.ndarray, recipe: TriggerLikeRecipe, rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    size = int(rng.integers(recipe.patch_size[0], recipe.patch_size[1] + 1))
    row = int(rng.integers(0, image.shape[0] - size + 1))
    col = int(rng.integers(0, image.shape[1] - size + 1))
    kind = rng.integers(3)
    if kind == 0:  # checkerboard of two random colours
        colours = rng.integers(0, 256, size=(2, 3))
        board = np.indices((size, size)).sum(0) % 2
        out[row : row + size, col : col + size] = colours[board]
    elif kind == 1:  # solid colour
        out[row : row + size, col : col + size] = rng.integers(0, 256, size=3)
    else:  # noise
        out[row : row + size, col : col + size] = rng.integers(0, 256, size=(size, size, 3))
    return out


def _blend(image: np.ndarray, recipe: TriggerLikeRecipe, rng: np.random.Generator) -> np.ndarray:
    h, w, c = image.shape
    if rng.random() < 0.5:
        pattern = rng.integers(0, 256, size=(h, w, c)).astype(np.float32)
    else:
        period = rng.uniform(2, 8)
        axis = np.arange(w) if rng.random() < 0.5 else np.arange(h)
        wave = (np.sin(axis * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)) + 1) * 127.5
        pattern = np.broadcast_to(wave[None, :, None] if len(axis) == w else wave[:, None, None], (h, w, c))
    alpha = rng.uniform(*recipe.blend_alpha)
    return np.clip(np.rint((1 - alpha) * image + alpha * pattern), 0, 255).astype(np.uint8)


def _freq(images: np.ndarray, recipe: TriggerLikeRecipe, spectrum: Spectrum, mask: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """Batched: Gaussian energy in the band, scaled per coefficient to the clean mean amplitude."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    coeffs = dctn(x, axes=(2, 3), norm="ortho")
    scale = recipe.freq_strength * spectrum.dct[:, mask]
    coeffs[:, :, mask] += rng.standard_normal((len(images), *scale.shape)).astype(np.float32) * scale
    out = idctn(coeffs, axes=(2, 3), norm="ortho").transpose(0, 2, 3, 1)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def trigger_like_copies(images: np.ndarray, recipe: TriggerLikeRecipe, spectrum: Spectrum,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``recipe.copies`` trigger-like copies of each image.

    Args:
        images: uint8 (N, H, W, C), clean.
        recipe: the kinds' weights and ranges.
        spectrum: the clean set's spectra (``amplitude_spectrum``), which scale the ``freq`` kind.
        rng: every draw (kind per copy, then each kind's parameters, kind by kind).
    Returns:
        (copies uint8 (N * copies, H, W, C), source row of each int64 (N * copies,), kind code
        int64 (N * copies,), an index into ``AUGMENTATIONS``); empty when ``copies`` is 0 or there
        is no image.
    """
    if recipe.copies == 0 or len(images) == 0:
        return images[:0], np.empty(0, np.int64), np.empty(0, np.int64)
    kinds = [k for k in MIX_KINDS if recipe.mix.get(k, 0) > 0]
    weights = np.asarray([recipe.mix[k] for k in kinds], dtype=np.float64)
    mask = band_mask(images.shape[1], images.shape[2], recipe.freq_band)
    sources = np.repeat(np.arange(len(images)), recipe.copies)
    chosen = rng.choice(len(kinds), size=len(sources), p=weights / weights.sum())
    out = np.empty((len(sources), *images.shape[1:]), dtype=np.uint8)
    for k, kind in enumerate(kinds):
        rows = np.flatnonzero(chosen == k)
        if kind == "freq":
            out[rows] = _freq(images[sources[rows]], recipe, spectrum, mask, rng)
            continue
        make = _patch if kind == "patch" else _blend
        for row in rows:
            out[row] = make(images[sources[row]], recipe, rng)
    codes = np.asarray([AUGMENTATIONS.index(kinds[k]) for k in chosen], dtype=np.int64)
    return out, sources, codes
