"""A frequency-domain trigger: a fixed, imperceptible perturbation in mid/high DCT coefficients
(in the spirit of FIBA / FTrojan), scaled so the poisoned image's PSNR is at least ``freq-psnr``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.fft import idctn

from clipfed.attacks.base import TRIGGER_SEED, DataPoisoning
from clipfed.attacks.registry import DATA_PARTS
from clipfed.dct import band_mask

if TYPE_CHECKING:
    from clipfed.config import RunConfig


def frequency_pattern(height: int, width: int, band: tuple[float, float], psnr: float) -> np.ndarray:
    """(H, W, 3) float perturbation: random signs on the band's DCT coefficients, RMSE set by PSNR."""
    rng = np.random.default_rng(TRIGGER_SEED)
    coeffs = np.zeros((3, height, width))
    mask = band_mask(height, width, band)
    coeffs[:, mask] = rng.choice([-1.0, 1.0], size=(3, int(mask.sum())))
    pattern = idctn(coeffs, axes=(1, 2), norm="ortho").transpose(1, 2, 0)
    rmse = 255.0 / 10 ** (psnr / 20)
    return pattern * rmse / np.sqrt(np.mean(pattern**2))


class FrequencyTrigger(DataPoisoning):
    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.band = (cfg.freq_band_low, cfg.freq_band_high)
        self.psnr = cfg.freq_psnr

    def apply_trigger(self, images: np.ndarray) -> np.ndarray:
        pattern = frequency_pattern(images.shape[1], images.shape[2], self.band, self.psnr)
        return np.clip(np.rint(images.astype(np.float64) + pattern), 0, 255).astype(np.uint8)


@DATA_PARTS.register("frequency")
def frequency(cfg: RunConfig) -> FrequencyTrigger:
    return FrequencyTrigger(cfg)
