"""Reorientation to RAS+ by reordering and flipping voxel axes (no resampling)."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nb
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.orientations import aff2axcodes, inv_ornt_aff, io_orientation


@dataclass(frozen=True)
class Reorientation:
    """What reorientation did, so that it can be undone or reported."""

    original_orientation: str
    original_shape: tuple[int, ...]
    original_affine: np.ndarray
    #: Maps (i, j, k, 1) voxel indices of the original grid to those of the RAS+ grid.
    voxel_mapping: np.ndarray

    def to_metadata(self) -> dict:
        return {
            'OriginalOrientation': self.original_orientation,
            'OriginalShape': list(self.original_shape),
            'OriginalAffine': np.round(self.original_affine, 6).tolist(),
            'VoxelMappingOriginalToRAS': self.voxel_mapping.astype(int).tolist(),
        }


def reorient_to_ras(img: nb.Nifti1Image) -> tuple[nb.Nifti1Image, Reorientation]:
    """The nibabel equivalent of ``fslreorient2std``, keeping the world coordinates exact.

    Axes are permuted and flipped to the RAS+ order closest to the image's affine; an
    oblique image stays oblique (no resampling), and qform and sform are each carried over
    with their own codes. Voxel values are copied unchanged: scaled integer data become
    float32, unscaled data keep their type.
    """
    ornt = io_orientation(img.affine)
    new_to_old = inv_ornt_aff(ornt, img.shape[:3])
    if _is_scaled(img):
        data = img.get_fdata(dtype=np.float32)
    else:
        data = np.asanyarray(img.dataobj)
    reoriented_data = nb.apply_orientation(data, ornt)

    reoriented = img.__class__(reoriented_data, img.affine @ new_to_old, img.header)
    reoriented.set_data_dtype(reoriented_data.dtype)
    qform, qform_code = img.header.get_qform(coded=True)
    sform, sform_code = img.header.get_sform(coded=True)
    reoriented.set_qform(
        img.header.get_qform() @ new_to_old, code=int(qform_code) if qform is not None else 0
    )
    reoriented.set_sform(
        img.header.get_sform() @ new_to_old, code=int(sform_code) if sform is not None else 0
    )
    record = Reorientation(
        original_orientation=''.join(aff2axcodes(img.affine)),
        original_shape=tuple(int(n) for n in img.shape),
        original_affine=img.affine.copy(),
        voxel_mapping=np.linalg.inv(new_to_old),
    )
    return reoriented, record


def _is_scaled(img: nb.Nifti1Image) -> bool:
    """Whether stored voxels are scaled (nibabel moves scl_slope/scl_inter into the proxy)."""
    if isinstance(img.dataobj, ArrayProxy):
        return img.dataobj.slope != 1.0 or img.dataobj.inter != 0.0
    slope, inter = img.header.get_slope_inter()
    return slope not in (None, 1.0) or inter not in (None, 0.0)
