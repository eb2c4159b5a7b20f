"""PSNR inside a mask, as the evaluations of super-resolution report it (SSIM, which the
training of harmonizers uses too, is :func:`mrctprep.imaging.similarity.structural_similarity`)."""

from __future__ import annotations

import numpy as np


def peak_signal_to_noise_ratio(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB inside ``mask``; the peak is the truth's range there."""
    truth_in, estimate_in = truth[mask].astype(np.float64), estimate[mask].astype(np.float64)
    mse = np.mean((estimate_in - truth_in) ** 2)
    peak = truth_in.max() - truth_in.min()
    return float(10 * np.log10(peak**2 / mse))
