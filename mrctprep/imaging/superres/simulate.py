"""Thick-slice scans simulated from a high-resolution image, baselines and quality measures.

Used by the tests and the benchmark: a 1 mm head is blurred along one axis by a Gaussian
slice profile (FWHM = slice thickness) and sampled every ``thickness`` mm; reconstructions are
scored by PSNR and SSIM inside a mask against the 1 mm truth, beside spline upsampling.
"""

from __future__ import annotations

import math

import nibabel as nb
import numpy as np
from scipy import ndimage


def thick_slices(
    img: nb.Nifti1Image, axis: int, thickness_mm: float, *, offset: int = 0
) -> nb.Nifti1Image:
    """``img`` seen through slices ``thickness_mm`` thick (Gaussian profile) along ``axis``.

    The thickness must be a whole number of ``img``'s voxels along ``axis``; slice centres
    lie on ``img``'s voxel centres, from voxel ``offset`` on.
    """
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    step = thickness_mm / zooms[axis]
    if abs(step - round(step)) > 1e-6:
        raise ValueError(f'{thickness_mm} mm is not a whole number of {zooms[axis]} mm voxels')
    step = round(step)
    data = img.get_fdata(dtype=np.float32)
    sigma = step / math.sqrt(8 * math.log(2))
    blurred = ndimage.gaussian_filter1d(data, sigma, axis=axis, mode='nearest', truncate=4.0)
    index = [slice(None)] * 3
    index[axis] = slice(offset, None, step)
    scale = np.ones(3)
    scale[axis] = step
    shift = np.zeros(3)
    shift[axis] = offset
    to_source = np.diag([*scale, 1.0])
    to_source[:3, 3] = shift
    thick = nb.Nifti1Image(blurred[tuple(index)], img.affine @ to_source)
    thick.set_qform(thick.affine, code=1)
    thick.set_sform(thick.affine, code=1)
    return thick


def spline_upsample(
    img: nb.Nifti1Image, shape: tuple[int, int, int], affine: np.ndarray, *, order: int = 3
) -> np.ndarray:
    """``img`` resampled onto a grid by a scipy B-spline of ``order`` (3 = cubic)."""
    to_source = np.linalg.inv(img.affine) @ affine
    return ndimage.affine_transform(
        img.get_fdata(dtype=np.float32), to_source, output_shape=shape, order=order,
        mode='nearest',
    )  # fmt: skip


def psnr(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB inside ``mask``; the peak is the truth's range there."""
    truth_in, estimate_in = truth[mask].astype(np.float64), estimate[mask].astype(np.float64)
    mse = np.mean((estimate_in - truth_in) ** 2)
    peak = truth_in.max() - truth_in.min()
    return float(10 * np.log10(peak**2 / mse))


def ssim(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean structural similarity inside ``mask`` (Gaussian window, sigma 1.5 voxels)."""
    truth_in = truth[mask]
    peak = float(truth_in.max() - truth_in.min())
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    a, b = estimate.astype(np.float64), truth.astype(np.float64)

    def blur(volume):
        return ndimage.gaussian_filter(volume, 1.5, truncate=3.5)

    mean_a, mean_b = blur(a), blur(b)
    var_a = blur(a * a) - mean_a**2
    var_b = blur(b * b) - mean_b**2
    covariance = blur(a * b) - mean_a * mean_b
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(index[mask].mean())
