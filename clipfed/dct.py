"""DCT bands, shared by both sides: the frequency trigger (client) and the server's trigger-like
augmentation (synthesis). A leaf module (numpy, scipy), so neither side imports the other."""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn


def band_mask(height: int, width: int, band: tuple[float, float]) -> np.ndarray:
    """(H, W) bool: DCT coefficients whose normalised radius sqrt((u/H)^2 + (v/W)^2) / sqrt(2)
    lies in ``band`` (both ends in [0, 1], inclusive)."""
    u = np.arange(height)[:, None] / height
    v = np.arange(width)[None, :] / width
    radius = np.sqrt(u**2 + v**2) / np.sqrt(2)
    low, high = band
    return (radius >= low) & (radius <= high)


def band_energy(images: np.ndarray, band: tuple[float, float]) -> float:
    """Mean squared orthonormal DCT coefficient of uint8 (N, H, W, C) ``images`` (scaled to [0, 1])
    inside ``band`` (a test and diagnostic helper)."""
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
    coeffs = dctn(x, axes=(2, 3), norm="ortho")
    return float((coeffs[..., band_mask(x.shape[2], x.shape[3], band)] ** 2).mean())
