"""IGUANe's model input: brain median scaled to 500, then a 160x192x160 crop (or 176x208x176)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nb
import numpy as np

from mrctprep.imaging.axes import three

MEDIAN_TARGET = 500.0
#: The generator halves each axis four times: every crop size is a multiple of this.
SIZE_MULTIPLE = 16
#: Per axis of the 182x218x182 grid: (target size, empty slabs needed, half, fallback start,
#: fallback size), from IGUANe's crop rule.
IGUANE_CROP_RULE = (
    (160, 22, 11, 3, 176),
    (192, 26, 13, 5, 208),
    (160, 22, 11, 3, 176),
)


@dataclass(frozen=True)
class CropBox:
    """``fslroi`` semantics: 0-based start and size per axis."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def slices(self) -> tuple[slice, slice, slice]:
        return three(slice(b, b + n) for b, n in zip(self.start, self.size, strict=True))

    def to_metadata(self) -> dict:
        return {key: list(value) for key, value in asdict(self).items()}


def median_normalise(
    img: nb.Nifti1Image, mask: nb.Nifti1Image, target: float = MEDIAN_TARGET
) -> tuple[nb.Nifti1Image, float]:
    """Brain voxels scaled so that their median is ``target``; background set to 0.

    Returns the image and the scale applied (``normalised = scale * original`` in the mask).
    """
    data = img.get_fdata(dtype=np.float32)
    inside = mask.get_fdata() > 0
    if not inside.any():
        raise ValueError('median normalisation needs a non-empty brain mask')
    median = float(np.median(data[inside]))
    if median <= 0:
        raise ValueError(
            f'the median intensity inside the brain mask is {median:g}: the mask does not '
            'cover the brain (failed skull stripping or registration; see the QC figures)'
        )
    scale = target / median
    out = np.where(inside, data * scale, 0).astype(np.float32)
    return _like(out, img), scale


def iguane_crop_box(data: np.ndarray) -> CropBox:
    """IGUANe's crop of a skull-stripped 182x218x182 MNI volume.

    For each axis count the empty leading (``l``) and trailing (``t``) slices. With enough
    background (``l + t >= need``) the box starts at ``l`` if ``l < half``, else at
    ``S - T - t`` if ``t < half``, else at ``half``; otherwise the larger central fallback box.
    """
    if data.shape != (182, 218, 182):
        raise ValueError(f'the IGUANe crop needs a 182x218x182 volume, got {data.shape}')
    starts, sizes = [], []
    for axis, (target, need, half, fallback_start, fallback_size) in enumerate(IGUANE_CROP_RULE):
        occupied = np.flatnonzero(np.any(data != 0, axis=tuple(a for a in range(3) if a != axis)))
        full = data.shape[axis]
        leading = int(occupied[0]) if occupied.size else full
        trailing = int(full - 1 - occupied[-1]) if occupied.size else full
        if leading + trailing >= need:
            if leading < half:
                start = leading
            elif trailing < half:
                start = full - target - trailing
            else:
                start = half
            starts.append(start)
            sizes.append(target)
        else:
            starts.append(fallback_start)
            sizes.append(fallback_size)
    return CropBox(three(starts), three(sizes))


def crop(img: nb.Nifti1Image, box: CropBox) -> nb.Nifti1Image:
    """The box's voxels, with the affine moved so world coordinates are unchanged."""
    return img.slicer[box.slices()]


def uncrop(img: nb.Nifti1Image, box: CropBox, full: nb.Nifti1Image) -> nb.Nifti1Image:
    """Put a cropped image back onto the grid it was cropped from (zeros elsewhere)."""
    data = np.zeros(full.shape[:3], np.float32)
    data[box.slices()] = img.get_fdata(dtype=np.float32)
    return _like(data, full)


def _like(data: np.ndarray, img: nb.Nifti1Image) -> nb.Nifti1Image:
    out = nb.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(data.dtype)
    return out
