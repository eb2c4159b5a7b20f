"""Thick-slice scans simulated from a high-resolution image, and the spline baseline.

Used by the tests and the benchmark: a 1 mm head is blurred along one axis by a Gaussian
slice profile (FWHM = slice thickness) and sampled every ``thickness`` mm; reconstructions are
scored (:mod:`helpers.metrics`) inside a mask against the 1 mm truth, beside spline upsampling.
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
        img.get_fdata(dtype=np.float32),
        to_source,
        output_shape=shape,
        order=order,
        mode='nearest',
    )
