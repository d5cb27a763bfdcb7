"""Stage 4: the clean set's spectrum, and trigger-like augmentations that keep clean labels.

Backdoor triggers concentrate energy in mid/high spatial frequencies (patches have sharp edges,
blended noise is broadband). From the clean images' mean DCT amplitude we build perturbations of
three families: local patches, blended patterns, and energy injected into a chosen DCT band
scaled to the clean set's own amplitude there. Aligning the global model with the teacher on
these copies (labelled with their clean class) teaches it to ignore such patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import dctn, idctn

from clipfed.data_synth.config import AugmentConfig, MixKind
from clipfed.dct import band_mask

AUGMENTATIONS = ("clean", "patch", "blend", "freq")
MIX_KINDS: tuple[MixKind, ...] = ("patch", "blend", "freq")


@dataclass(frozen=True)
class Spectrum:
    """Mean amplitude spectra (C, H, W) of a clean uint8 image set."""

    dct: np.ndarray
    fft: np.ndarray


def amplitude_spectrum(images: np.ndarray) -> Spectrum:
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    dct = np.abs(dctn(x, axes=(2, 3), norm="ortho")).mean(0)
    fft = np.fft.fftshift(np.abs(np.fft.fft2(x, norm="ortho")).mean(0), axes=(1, 2))
    return Spectrum(dct.astype(np.float32), fft.astype(np.float32))


def _patch(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    size = int(rng.integers(cfg.patch_size[0], cfg.patch_size[1] + 1))
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


def _blend(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    h, w, c = image.shape
    if rng.random() < 0.5:
        pattern = rng.integers(0, 256, size=(h, w, c)).astype(np.float32)
    else:
        period = rng.uniform(2, 8)
        axis = np.arange(w) if rng.random() < 0.5 else np.arange(h)
        wave = (np.sin(axis * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)) + 1) * 127.5
        pattern = np.broadcast_to(wave[None, :, None] if len(axis) == w else wave[:, None, None], (h, w, c))
    alpha = rng.uniform(*cfg.blend_alpha)
    return np.clip(np.rint((1 - alpha) * image + alpha * pattern), 0, 255).astype(np.uint8)


def _freq(images: np.ndarray, cfg: AugmentConfig, spectrum: Spectrum, mask: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """Batched: Gaussian energy in the band, scaled per coefficient to the clean mean amplitude."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    coeffs = dctn(x, axes=(2, 3), norm="ortho")
    scale = cfg.freq_strength * spectrum.dct[:, mask]
    coeffs[:, :, mask] += rng.standard_normal((len(images), *scale.shape)).astype(np.float32) * scale
    out = idctn(coeffs, axes=(2, 3), norm="ortho").transpose(0, 2, 3, 1)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def augment(images: np.ndarray, cfg: AugmentConfig, spectrum: Spectrum,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cfg.copies`` trigger-like copies of each image: (images, index of the source, kind code)."""
    if not cfg.enabled or cfg.copies == 0 or len(images) == 0:
        return images[:0], np.empty(0, np.int64), np.empty(0, np.int64)
    kinds = [k for k in MIX_KINDS if cfg.mix.get(k, 0) > 0]
    weights = np.asarray([cfg.mix[k] for k in kinds], dtype=np.float64)
    mask = band_mask(images.shape[1], images.shape[2], cfg.freq_band)
    sources = np.repeat(np.arange(len(images)), cfg.copies)
    chosen = rng.choice(len(kinds), size=len(sources), p=weights / weights.sum())
    out = np.empty((len(sources), *images.shape[1:]), dtype=np.uint8)
    for k, kind in enumerate(kinds):
        rows = np.flatnonzero(chosen == k)
        if kind == "freq":
            out[rows] = _freq(images[sources[rows]], cfg, spectrum, mask, rng)
            continue
        make = _patch if kind == "patch" else _blend
        for row in rows:
            out[row] = make(images[sources[row]], cfg, rng)
    codes = np.asarray([AUGMENTATIONS.index(kinds[k]) for k in chosen], dtype=np.int64)
    return out, sources, codes
